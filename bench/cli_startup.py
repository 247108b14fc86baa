"""How fast the commands that neither train nor score answer, and what they import: `deepfm --help`, a cache-hit
`deepfm data prepare STUDY` and `deepfm status STUDY` (issue 15: no torch, and a cache hit in <= 0.8 s).

Each command runs REPEATS times in a fresh process (wall time, median and best); one more run with
`python -X importtime` lists which heavy libraries it imported. The study is studies/quick.yaml, prepared and tuned
once (2 trials) in a scratch folder first, so `prepare` is a cache hit and `status` has trials to show.

    python bench/cli_startup.py [--repeats 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, write_json

HEAVY = ("torch", "sklearn", "mlflow", "optuna", "pandas", "pyarrow", "sqlalchemy")


def deepfm(*args: str) -> list[str]:
    return [sys.executable, "-m", "deepfm_tuner.tuner.cli", *args]


def wall(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def imported(command: list[str], cwd: Path) -> list[str]:
    """Heavy top-level packages the command imported (from `python -X importtime`'s report on stderr)."""
    run = subprocess.run([command[0], "-X", "importtime", *command[1:]], cwd=cwd, check=True, capture_output=True,
                         text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return sorted(name for name in HEAVY if name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="deepfm-startup-"))
    try:
        shutil.copy(ROOT / "studies" / "quick.yaml", folder / "quick.yaml")
        subprocess.run(deepfm("tune", "quick.yaml", "--n-trials", "2", "--no-promote"), cwd=folder,
                       check=True, capture_output=True)
        results = {}
        for name, command in {"--help": deepfm("--help"),
                              "data prepare (cache hit)": deepfm("data", "prepare", "quick.yaml"),
                              "status": deepfm("status", "quick.yaml")}.items():
            times = [wall(command, folder) for _ in range(args.repeats)]
            results[name] = {"median_s": statistics.median(times), "best_s": min(times),
                             "heavy_imports": imported(command, folder)}
        write_json({"repeats": args.repeats, "commands": results}, "cli_startup.json", args.out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
