"""Epoch patience against step patience (issue 16 item 7): the same study run twice on the same data and seeds,
once stopping a trial after `patience` epochs without a better full-split score (today's rule) and once after
`patience_steps` evaluations on the validation sample (training.eval_every 0.25). Records the training samples
each study processed, its wall time, its champion's test AUC, and DeLong's comparison of the two champions on the
same test rows.

TPE + sub-epoch median pruning over the five V1 hyperparameters (bench/tuning.py's `pays` study), at most
--epochs epochs per trial, finalists off, each study promoted to its own registered model.

    python bench/step_patience.py [--rows 1000000] [--trials 12] [--epochs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, write_json  # noqa: E402
from bench.tuning import pays_document, run_pays_study  # noqa: E402

VARIANTS = {"epoch_patience": {"patience": 2}, "step_patience": {"patience": 0, "patience_steps": 2}}


def champion_scores(study: dict, test_frame):
    """The promoted version's click probabilities on the test rows."""
    from mlflow import MlflowClient

    from deepfm_tuner.tuner.registry.pull import load_version
    from deepfm_tuner.tuner.serving.scoring import predict_frame

    client = MlflowClient(study["tracking_uri"])
    version = client.get_model_version(study["registered_model"], str(study["version"]))
    return predict_frame(load_version(version, client), test_frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--startup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subepoch-warmup", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="reused: data, stores")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.finalists, args.suffix = None, ""

    from deepfm_tuner.model.data.frames import check_labels
    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.tuner.registry.gate import delong_test

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-steps-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    data_block = {"synthetic": {"rows": args.rows, "seed": 0}, "synthetic_dir": str(workdir / "generated"),
                  "encoded_dir": str(workdir / "encoded")}
    data = DataSpec.from_dict(data_block).prepare(print)
    results: dict = {"benchmark": "step_patience", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                     "args": vars(args), "data": data.summary(), "studies": {}}
    for name, stopping in VARIANTS.items():
        document = pays_document(name, data_block, args, {}, 0.25)
        document["training"].update(stopping)
        study = run_pays_study(document, workdir / name, data)
        trials = study.pop("_trials")
        study.update(registered_model=f"bench-{name}", version=study_version(workdir / name, f"bench-{name}"),
                     tracking_uri=f"sqlite:///{workdir / name}/mlflow.db",
                     epochs_per_complete_trial=[round(t.user_attrs["training"]["samples"] / len(data.parts["train"]), 2)
                                                for t in trials if t.state.name == "COMPLETE"])
        results["studies"][name] = study
        print(f"{name}: {study['samples']:,} samples in {study['wall_seconds']:.0f} s, champion test AUC "
              f"{study['champion_test_auc']:.4f}", flush=True)
    test_frame = data.test_frame()
    labels = check_labels(test_frame, data.encoder.schema.label, "test rows")
    steps, epochs = (champion_scores(results["studies"][k], test_frame) for k in ("step_patience", "epoch_patience"))
    comparison = delong_test(labels, steps, epochs)
    results["step_minus_epoch"] = {"auc_diff": comparison.diff, "ci_low": comparison.ci_low,
                                   "ci_high": comparison.ci_high, "p_value": comparison.p_value}
    a, b = (results["studies"][k] for k in ("step_patience", "epoch_patience"))
    results["samples_ratio"] = a["samples"] / b["samples"]
    results["wall_ratio"] = a["wall_seconds"] / b["wall_seconds"]
    print(f"step / epoch patience: samples x{results['samples_ratio']:.2f}, wall x{results['wall_ratio']:.2f}; "
          f"champion AUC step - epoch {comparison.describe()}", flush=True)
    write_json(results, "step_patience.json", args.out)


def study_version(root: Path, name: str) -> int:
    """The version the study promoted (the newest of its registered model)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    return max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))


if __name__ == "__main__":
    main()
