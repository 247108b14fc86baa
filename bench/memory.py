"""Peak memory of the 1M-row training run: read + split + fit/encode + one epoch + evaluation, in a fresh
process (`train_throughput.py --ours-only`), measured as that child's peak RSS (getrusage). Target <= 1 GiB.

    python bench/memory.py

Writes JSON to --out or $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ensure_data, machine, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    ensure_data()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(__file__).with_name("train_throughput.py")
        subprocess.run([sys.executable, str(script), "--ours-only", "--threads", str(args.threads), "--out", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        child = json.loads((Path(tmp) / "train_throughput.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    results = {"machine": machine(), "peak_rss_mib": peak, "data": child["data"],
               "samples_per_second": child["ours"]["samples_per_second"], "test_auc": child["ours"]["test_auc"]}
    write_json(results, "memory.json", args.out)


if __name__ == "__main__":
    main()
