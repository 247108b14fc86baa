"""The study file as typed, validated objects: the study's settings and its search space (the V1 hyperparameters
and the tunable training knobs), checked once when the file is read; the rest of the code trusts them."""
