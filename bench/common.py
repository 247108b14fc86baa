"""Shared by the benchmarks: the benchmark data set (Criteo-format synthetic rows) and the machine's description.

`ensure_data` writes data/generated/bench/{train,val,test}.tsv once (1,000,000 / 125,000 / 125,000 rows of one
synthetic draw, so the parts are i.i.d.) plus all.tsv (the three in that order, as one file), and reuses them
afterwards; data/generated/ is git-ignored. `load_prepared` reads all.tsv and splits it by position, through the
same `read_table` + `prepare` path as `deepfm train`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the benches run with the project installed (scripts/setup.sh)

DATA_DIR = ROOT / "data" / "generated" / "bench"
TRAIN_ROWS, VAL_ROWS, TEST_ROWS = 1_000_000, 125_000, 125_000
SEED = 0


def ensure_data(train_rows: int = TRAIN_ROWS, val_rows: int = VAL_ROWS, test_rows: int = TEST_ROWS,
                directory: Path | None = None) -> Path:
    """The benchmark's Criteo TSVs (no header): generated on first use, then reused."""
    from deepfm_tuner.model.data.synth import SynthSpec, bayes_metrics, generate, write_criteo_tsv

    if directory is None:
        directory = DATA_DIR if train_rows == TRAIN_ROWS else DATA_DIR.with_name(f"bench-{train_rows}")
    directory = Path(directory)
    info = directory / "info.json"
    if info.is_file():
        return directory
    started = time.perf_counter()
    frame, probability = generate(SynthSpec(rows=train_rows + val_rows + test_rows, seed=SEED))
    cuts = {"train": (0, train_rows), "val": (train_rows, train_rows + val_rows),
            "test": (train_rows + val_rows, len(frame))}
    for name, (a, b) in cuts.items():
        write_criteo_tsv(frame.iloc[a:b], directory / f"{name}.tsv")
    with open(directory / "all.tsv", "wb") as out:
        for name in cuts:
            out.write((directory / f"{name}.tsv").read_bytes())
    a, b = cuts["test"]
    truth = bayes_metrics(frame["label"].to_numpy()[a:b], probability[a:b])
    info.write_text(json.dumps({"rows": {k: b - a for k, (a, b) in cuts.items()}, "seed": SEED,
                                "click_rate": float(frame["label"].mean()),
                                **{f"test_{k}": v for k, v in truth.items()},
                                "generate_seconds": time.perf_counter() - started}, indent=2) + "\n")
    return directory


def load_prepared(directory: Path):
    """Read all.tsv, split it by position (train, val, test as written), fit the encoder on train, encode once:
    (PreparedData, seconds)."""
    from deepfm_tuner.model.data.frames import Split, read_table
    from deepfm_tuner.model.data.schema import criteo_schema
    from deepfm_tuner.model.data.tensors import prepare

    started = time.perf_counter()
    rows = json.loads((directory / "info.json").read_text())["rows"]
    frame = read_table(directory / "all.tsv", "criteo")
    edges = np.cumsum([0, rows["train"], rows["val"], rows["test"]])
    split = Split(*(np.arange(edges[i], edges[i + 1]) for i in range(3)))
    prepared = prepare(frame, criteo_schema(), split, source=str(directory / "all.tsv"))
    return prepared, time.perf_counter() - started


def machine() -> dict[str, object]:
    import torch

    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        memory = "?"
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "memory": memory,
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(results: dict, name: str, out: str | None) -> None:
    """Print the results; also write them to OUT/name when OUT (or $OUT) is set."""
    text = json.dumps(results, indent=2, default=float)
    print(text)
    out = out or os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(text + "\n")


def register_untrained_policy(folder: Path, encoder, input_example) -> str:
    """Register the V1 policy (untrained weights, `encoder` fitted) as bench_ctr v1 in a throwaway SQLite store
    under `folder`; returns the store's URI (scoring speed does not depend on the weights' values)."""
    import mlflow

    from deepfm_tuner.model.config import PolicyConfig, TrainConfig
    from deepfm_tuner.model.policy import ScoringPolicy
    from deepfm_tuner.tuner.serving.pyfunc import log_policy_model

    ScoringPolicy.build(PolicyConfig(), TrainConfig(device="cpu"), encoder).save(folder / "policy")
    uri = f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=str(folder / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        info = log_policy_model(folder / "policy", input_example=input_example)
    mlflow.register_model(info.model_uri, "bench_ctr")
    return uri
