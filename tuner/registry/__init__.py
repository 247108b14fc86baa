"""The MLflow Model Registry side: model references, the champion gate (DeLong's paired AUC test), promotion with
aliases, checksums of what was registered, and pulling a version."""
