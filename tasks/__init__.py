"""Prefect tasks, one per DVC stage plus registry actions (the orchestration layer).

Thin by design: each task runs its stage through ``dvc repro`` so ``dvc.lock`` stays the
record of what was built. The stages themselves live in :mod:`pipeline_lib.stages`.
"""
