"""Models: the MLflow registry and the scoring of a loaded version."""
