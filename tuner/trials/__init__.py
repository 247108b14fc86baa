"""What a trial is: the Optuna objective, the life of its MLflow run (shared with finalist retrains), what it
records on the study and how that is read back; the V1 baseline trial, warm-start trials and finalists over seeds."""
