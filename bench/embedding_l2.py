"""How much does `training.embedding_l2` matter, and over which range? (issue 10, item 2: the default range).

Trains the seed V1 config with the same control at each penalty strength and records the best-epoch validation
AUC, test AUC and the mean squared norm of the embedding rows, on
  - the project's 1M-row synthetic set (Bayes-optimal test AUC known), and
  - the shipped real sample (Open Bandit, data/open-bandit/men.csv, 10,000 rows: tiny, so noisy).
Two seeds at every strength give the seed-to-seed noise the differences are judged against.

    python bench/embedding_l2.py [--rows 1000000] [--values 0,1e-4,...] [--seeds 2]
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

DEFAULT_VALUES = "0,1e-4,1e-3,1e-2,3e-2,1e-1,3e-1,1,3"


def run(prepared, l2: float, seed: int, args) -> dict[str, float]:
    import torch

    from deepfm_tuner.model.config import PolicyConfig, TrainConfig
    from deepfm_tuner.model.train import evaluate, train

    control = TrainConfig(batch_size=args.batch_size, max_epochs=args.epochs, patience=1, seed=seed, device="cpu",
                          threads=args.threads, embedding_l2=l2)
    started = time.perf_counter()
    result = train(prepared, PolicyConfig(), control)
    test_auc, test_logloss = evaluate(result.model, prepared.test)
    with torch.no_grad():
        norm = float(result.model.embedding.weight.pow(2).sum(1).mean())
    return {"embedding_l2": l2, "seed": seed, "val_auc": result.best.val_auc, "val_logloss": result.best.val_logloss,
            "test_auc": test_auc, "test_logloss": test_logloss, "best_epoch": result.best_epoch + 1,
            "embedding_sq_norm": norm, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--values", default=DEFAULT_VALUES)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where the synthetic and encoded data go (reused)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from deepfm_tuner.model.data.source import DataSpec
    from deepfm_tuner.model.data.synth import read_truth

    root = Path(__file__).resolve().parents[1]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deepfm-bench-l2-"))
    values = [float(v) for v in args.values.split(",")]
    sets = {
        "synthetic": DataSpec(synthetic={"rows": args.rows, "seed": 0}, synthetic_dir=str(workdir / "generated"),
                              encoded_dir=str(workdir / "encoded")),
        "open_bandit": DataSpec(train=str(root / "data/open-bandit/men.csv"), encoded_dir=str(workdir / "encoded"),
                                schema={"label": "click", "ignore": ["", "timestamp", "propensity_score"]},
                                order_by="timestamp"),
    }
    results: dict[str, object] = {"benchmark": "embedding_l2", "date": time.strftime("%Y-%m-%d"),
                                  "machine": machine(), "args": vars(args), "sets": {}}
    for name, spec in sets.items():
        prepared = spec.prepare(lambda message: None)
        rows = [run(prepared, l2, seed, args) for l2 in values for seed in range(args.seeds)]
        entry: dict[str, object] = {"data": prepared.summary(), "runs": rows}
        if name == "synthetic":
            truth = read_truth(next(p for p in (workdir / "generated").iterdir() if p.is_dir()))
            entry["bayes_test_auc"] = truth and truth.get("test_bayes_auc")
        results["sets"][name] = entry  # type: ignore[index]
        for row in rows:
            print(f"{name:12s} l2={row['embedding_l2']:<7g} seed={row['seed']} val_auc={row['val_auc']:.4f} "
                  f"test_auc={row['test_auc']:.4f} epoch={row['best_epoch']} |e|^2={row['embedding_sq_norm']:.4f} "
                  f"{row['seconds']:.0f}s", flush=True)
    write_json(results, "embedding_l2.json", args.out)


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
