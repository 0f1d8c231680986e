"""Release: the MLflow registry, tracking, the field monitor, the project lock."""
