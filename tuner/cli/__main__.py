"""`python -m deepfm_tuner.tuner.cli`: the `deepfm` command (local workers start themselves this way)."""

from deepfm_tuner.tuner.cli import main

main(prog_name="deepfm")
