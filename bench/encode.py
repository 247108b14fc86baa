"""Encoding speed: read 1M Criteo-format rows (`read_table`), fit the encoder, transform them. Target <= 5 s.

    python bench/encode.py                 # best and median of 3 repeats, with the three phases
    python bench/encode.py --repeats 5

Writes JSON to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import ensure_data, machine, max_rss_mib, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from deepfm_tuner.model.data.encoder import FeatureEncoder
    from deepfm_tuner.model.data.frames import read_table
    from deepfm_tuner.model.data.schema import criteo_schema

    path = ensure_data() / "train.tsv"
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        frame = read_table(path, "criteo")
        t1 = time.perf_counter()
        encoder = FeatureEncoder(criteo_schema()).fit(frame)
        t2 = time.perf_counter()
        features = encoder.transform(frame)
        t3 = time.perf_counter()
        rows = len(frame)
        runs.append({"read": t1 - t0, "fit": t2 - t1, "transform": t3 - t2, "total": t3 - t0})
        print(f"read {t1 - t0:.2f} s, fit {t2 - t1:.2f} s, transform {t3 - t2:.2f} s: {t3 - t0:.2f} s", flush=True)
        del frame, features
    best = min(runs, key=lambda r: r["total"])
    results = {"machine": machine(), "rows": rows,
               "file_mib": path.stat().st_size / 2**20, "runs": runs, "best": best,
               "median_total": statistics.median(r["total"] for r in runs), "max_rss_mib": max_rss_mib()}
    write_json(results, "encode.json", args.out)


if __name__ == "__main__":
    main()
