"""Orchestration: Optuna studies, MLflow tracking, the model registry, and the `deepfm` CLI."""
