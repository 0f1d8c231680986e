"""Prefect flows (build, retrain, monitor), their deployments and schedules.

Flows hold the side effects (MLflow runs, registry aliases, events); stages stay pure
file-to-file steps in :mod:`pipeline_lib`.
"""
