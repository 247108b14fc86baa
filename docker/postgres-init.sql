-- Run once by the postgres image on an empty volume: separate databases for the Optuna study and MLflow's
-- backend store, both owned by POSTGRES_USER (the user the image creates).
CREATE DATABASE optuna;
CREATE DATABASE mlflow;
