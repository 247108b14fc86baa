"""Scoring with a registered policy, wherever it runs: the pyfunc model MLflow loads and serves (pyfunc), and batch
scoring of files (scoring). This room depends on the model package, MLflow, NumPy, pandas and PyArrow only: it
travels with every registered model as code, so a pulled model scores without the tuning tools installed."""
