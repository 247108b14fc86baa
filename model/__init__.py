"""DeepFM scoring policy: config, features, model, training. Knows nothing of Optuna or MLflow."""
