"""`deepfm score` on a big Criteo-format file: rows/s and the scoring process's peak memory (the file is streamed).

    python bench/score_stream.py [--rows 20000000] [--output parquet|csv|tsv] [--delete-data] [--out DIR]

Generates the rows once with `deepfm data synth` (into data/generated/score-ROWS/: train.tsv holds exactly --rows
rows, test.tsv 5% more, used to fit the encoder) and reuses them afterwards; --delete-data removes them at the
end (20M rows are ~5 GB). The model is the default V1 policy (embedding 16, MLP 128-64-32) with untrained
weights (scoring costs the same), its encoder fitted on the first 500k rows of test.tsv, registered in a
throwaway SQLite store. Then `deepfm score --model bench_ctr/1 --input train.tsv --format criteo --output
scores.OUTPUT` runs as a child process under /usr/bin/time -v; reported: its peak RSS (time -v's maximum
resident set size, and the most RSS seen by sampling its process tree every 0.2 s), wall time, the rows/s that
`deepfm score` prints, and the load average before and after (other work on the machine slows it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, machine, register_untrained_policy, write_json

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
TEST_FRACTION = 0.05
ENCODER_ROWS = 500_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--output", choices=["parquet", "csv", "tsv"], default="parquet")
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--delete-data", action="store_true", help="remove the generated rows at the end")
    parser.add_argument("--out", default=None, help="also write score_stream.json here (default: $OUT if set)")
    args = parser.parse_args()
    deepfm = str(Path(sys.executable).with_name("deepfm"))
    data = ROOT / "data" / "generated" / f"score-{args.rows}"
    started = time.perf_counter()
    total = round(args.rows / (1 - TEST_FRACTION))
    subprocess.run([deepfm, "data", "synth", "--rows", str(total), "--test-fraction", str(TEST_FRACTION),
                    "--out", str(data)], check=True)
    truth = json.loads((data / "truth.json").read_text())
    input_bytes = (data / "train.tsv").stat().st_size
    generate_seconds = time.perf_counter() - started
    try:
        with tempfile.TemporaryDirectory(prefix="bench-score-stream-", dir=data.parent) as tmp:
            tmp = Path(tmp)
            uri = register(data / "test.tsv", tmp)
            output = tmp / f"scores.{args.output}"
            command = [deepfm, "score", "--model", "bench_ctr/1", "--input", str(data / "train.tsv"), "--format",
                       "criteo", "--output", str(output), "--batch-size", str(args.batch_size),
                       "--tracking-uri", uri]
            load_before = os.getloadavg()
            run = measure(["/usr/bin/time", "-v", *command] if Path("/usr/bin/time").exists() else command)
            load_after = os.getloadavg()
            output_bytes = output.stat().st_size
    finally:
        if args.delete_data:
            shutil.rmtree(data, ignore_errors=True)
            data.with_name(f"{data.name}.lock").unlink(missing_ok=True)  # left by `deepfm data synth`
    printed = re.search(r"scored ([\d,]+) rows .* in ([\d.]+)s \(([\d,]+) rows/s\)", run["stdout"])
    results = {
        "benchmark": "score_stream", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": machine(), "command": " ".join(["deepfm", *command[1:]]),
        "rows": truth["train_rows"], "input_bytes": input_bytes,
        "output": args.output, "output_bytes": output_bytes, "batch_size": args.batch_size,
        "generate_seconds": round(generate_seconds, 1),
        "printed": printed.group(0) if printed else run["stdout"][-300:],
        "scoring_rows_per_second": int(printed.group(3).replace(",", "")) if printed else None,
        "wall_seconds": round(run["seconds"], 1), "rows_per_second_wall": round(truth["train_rows"] / run["seconds"]),
        "peak_rss_mib": round(run["time_v_max_rss_kib"] / 1024, 1) if run["time_v_max_rss_kib"] else None,
        "peak_rss_sampled_mib": round(run["sampled_mib"], 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
    }
    write_json(results, "score_stream.json", args.out)


def register(sample_file: Path, tmp: Path) -> str:
    """The default policy (untrained) with an encoder fitted on the first rows of `sample_file`, registered as
    bench_ctr/1 in a SQLite store under `tmp`; the store's URI."""
    import mlflow

    from deepfm_tuner.model.data.encoder import FeatureEncoder
    from deepfm_tuner.model.data.frames import read_table
    from deepfm_tuner.model.data.schema import criteo_schema

    head = tmp / "head.tsv"
    with open(sample_file, "rb") as source, open(head, "wb") as out:
        for _, line in zip(range(ENCODER_ROWS), source):
            out.write(line)
    rows = read_table(head, "criteo")
    uri = register_untrained_policy(tmp, FeatureEncoder(criteo_schema()).fit(rows), rows.head(5))
    mlflow.set_tracking_uri(None)
    return uri


def measure(command: list[str]) -> dict:
    """Run `command`; its wall time, output, and peak memory two ways (/usr/bin/time -v's report when it wraps
    the command, and sampling of its process tree)."""
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "COLUMNS": "1000"})  # rich: the result line on one line
    sampled, done = [0.0], threading.Event()

    def sample() -> None:
        parent = psutil.Process(child.pid)
        while not done.wait(0.2):
            try:
                tree = [parent, *parent.children(recursive=True)]
                sampled[0] = max(sampled[0], sum(p.memory_info().rss for p in tree) / 2**20)
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr[-3000:]}")
    reported = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return {"seconds": seconds, "stdout": stdout, "sampled_mib": sampled[0],
            "time_v_max_rss_kib": int(reported.group(1)) if reported else None}


if __name__ == "__main__":
    main()
