"""The model room: the DeepFM scoring policy (config, model, training, optimizers, metrics, saved policy) and its
data (`model.data`). Knows nothing of Optuna, MLflow or the command line; the tuner builds on it."""
