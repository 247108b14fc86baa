"""Where a study and its runs live: the Optuna storage and the MLflow tracking store, picked once in one order
(flag > environment > study file > MLFLOW_TRACKING_URI > embedded SQLite), checked before any work, created once
under a lock; the tracking client every run goes through, with retries of what a busy store refuses."""
