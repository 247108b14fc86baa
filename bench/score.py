"""Scoring throughput and latency of the pyfunc model on raw Criteo-format rows.

    python bench/score.py [--rows 100000] [--repeats 9] [--latency-calls 1000] [--out DIR]

Fits the encoder on the benchmark's train.tsv (1M synthetic rows, see bench/common.py), builds a DeepFM with the
default V1 policy (embedding 16, MLP 128-64-32; weights untrained: scoring costs the same), logs it as the pyfunc
model into a throwaway SQLite store, loads it back through `models:/NAME/1` and measures:

- batch, best and median of --repeats, on the first --rows rows of test.tsv in two shapes a caller has:
  - `pyfunc.predict(conform(raw))` with `raw` as `read_table(..., "criteo")` gives it (float32 counts with NaN,
    dictionary-encoded tokens): conform (decodes the tokens for MLflow's type check) + MLflow's schema check +
    encoder + forward, as `deepfm score` runs it;
  - `pyfunc.predict(conform(frame))` with `frame` as `pandas.read_csv(sep="\t", header=None)` gives it (int64 or
    float64 counts, strings; conform casts the int64 counts, which MLflow's check refuses for `double`);
  also the in-memory `ScoringPolicy.predict` and `serving.scoring.score_file` (TSV in, Parquet out, model load
  included, as `deepfm score` runs it) for reference; bench/score_stream.py measures `deepfm score` on big files;
- single row: p50/p99 latency of one-row requests as `mlflow models serve` handles them: the JSON body
  (`dataframe_split`) parsed by MLflow's scoring server against the signature, then `pyfunc.predict`
  (HTTP excluded); reported for predict alone and for parse + predict; also `load_model` time and the first
  request to a freshly loaded model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ensure_data, machine, register_untrained_policy, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--out", default=None, help="also write score.json here (default: $OUT if set)")
    args = parser.parse_args()

    import mlflow
    import pandas as pd

    from deepfm_tuner.model.config import PolicyConfig
    from deepfm_tuner.model.data.encoder import FeatureEncoder
    from deepfm_tuner.model.data.frames import read_table
    from deepfm_tuner.model.data.schema import CRITEO_COLUMNS, criteo_schema
    from deepfm_tuner.model.policy import ScoringPolicy
    from deepfm_tuner.tuner.serving.pyfunc import conform
    from deepfm_tuner.tuner.serving.scoring import score_file

    directory = ensure_data()
    started = time.perf_counter()
    encoder = FeatureEncoder(criteo_schema()).fit(read_table(directory / "train.tsv", "criteo"))
    raw = read_table(directory / "test.tsv", "criteo").head(args.rows)
    plain = pd.read_csv(directory / "test.tsv", sep="\t", header=None, names=list(CRITEO_COLUMNS), nrows=args.rows)
    setup_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        tmp = Path(tmp)
        register_untrained_policy(tmp, encoder, raw.head(5))
        policy = ScoringPolicy.load(tmp / "policy")
        model = mlflow.pyfunc.load_model("models:/bench_ctr/1")
        schema = model.metadata.get_input_schema()

        def pyfunc_batch() -> np.ndarray:
            return model.predict(conform(raw, schema)).to_numpy()

        load_before = os.getloadavg()[0]
        cpu = time.process_time()
        batch_times = timed(args.repeats, pyfunc_batch)
        cpu_per_run = (time.process_time() - cpu) / max(args.repeats, 1)
        batch = min(batch_times)
        plain_batch = best_of(args.repeats, lambda: model.predict(conform(plain, schema)))
        in_memory = best_of(args.repeats, lambda: policy.predict(raw))
        np.testing.assert_allclose(pyfunc_batch(), policy.predict(raw), rtol=1e-6)
        np.testing.assert_allclose(model.predict(conform(plain, schema)).to_numpy(), policy.predict(raw), rtol=1e-6)
        # score_file end to end: load the model, stream the TSV, score in batches, write Parquet
        (tmp / "rows.tsv").write_bytes(b"".join(open(directory / "test.tsv", "rb").readlines()[: args.rows]))
        file_seconds = best_of(min(args.repeats, 2), lambda: score_file(
            mlflow.pyfunc.load_model("models:/bench_ctr/1"), tmp / "rows.tsv", tmp / "scores.parquet", fmt="criteo"))

        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        features = [spec.name for spec in schema.inputs]
        bodies = [json.dumps({"dataframe_split": {"columns": features, "data": [[_json_value(plain[c].iloc[i])
                                                                                 for c in features]]}})
                  for i in range(min(args.latency_calls, len(plain)))]
        parse = lambda body: infer_and_parse_data(json.loads(body), schema)  # noqa: E731
        t = time.perf_counter()
        fresh = mlflow.pyfunc.load_model("models:/bench_ctr/1")  # what a server does at start
        load_seconds = time.perf_counter() - t
        t = time.perf_counter()
        fresh.predict(parse(bodies[0]))
        first_request_ms = (time.perf_counter() - t) * 1000
        for body in bodies[:20]:  # warm-up
            model.predict(parse(body))
        predict_ms, request_ms = [], []
        for body in bodies:
            t = time.perf_counter()
            frame = parse(body)
            parsed = time.perf_counter()
            model.predict(frame)
            done = time.perf_counter()
            predict_ms.append((done - parsed) * 1000)
            request_ms.append((done - t) * 1000)
        mlflow.set_tracking_uri(None)

    results = {
        "benchmark": "score", "date": datetime.date.today().isoformat(), "machine": machine(),
        "rows": len(raw), "policy": PolicyConfig().to_dict(), "setup_seconds": round(setup_seconds, 1),
        "pyfunc_rows_per_second": round(len(raw) / batch),
        "pyfunc_rows_per_second_median": round(len(raw) / float(np.median(batch_times))),
        "pyfunc_seconds": round(batch, 3),
        "pyfunc_cpu_seconds_per_run": round(cpu_per_run, 3),
        "pyfunc_plain_frame_rows_per_second": round(len(raw) / plain_batch),
        "load_average_1min_before": round(load_before, 2),
        "in_memory_rows_per_second": round(len(raw) / in_memory),
        "score_file_rows_per_second": round(len(raw) / file_seconds),
        "single_row_predict_ms": percentiles(predict_ms),
        "load_model_seconds": round(load_seconds, 3),
        "first_request_after_load_ms": round(first_request_ms, 1),
        "single_row_parse_and_predict_ms": percentiles(request_ms),
        "pandas": pd.__version__, "mlflow": mlflow.__version__,
    }
    write_json(results, "score.json", args.out)


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p99": round(float(np.percentile(ms, 99)), 2),
            "calls": len(ms)}


def _json_value(value):
    """A cell as the JSON a client sends: null for missing, numbers as numbers."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def timed(repeats: int, func) -> list[float]:
    seconds = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        func()
        seconds.append(time.perf_counter() - t)
    return seconds


def best_of(repeats: int, func) -> float:
    return min(timed(repeats, func))


if __name__ == "__main__":
    main()
