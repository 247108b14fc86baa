"""What a registered model ships and runs: the scoring policy as an MLflow pyfunc model and batch scoring of raw
rows. Imports only deepfm_tuner.model (and MLflow, pandas, pyarrow): nothing of Optuna, click or the pipeline."""
