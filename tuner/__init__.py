"""The tuning platform around the model: study files, stores, trials, the study pipeline, the registry, serving and
the `deepfm` CLI (docs/architecture.md draws the rooms and what each may import). Importing it imports nothing."""
