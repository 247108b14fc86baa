"""The embedding optimizer's step, both ways it finds the touched rows (issue 19 item 5): the CPU's bincount +
nonzero, and the sync-free sorted slots a GPU runs (here forced on the CPU). Same update, bit for bit (tests/model/
test_optim.py); this measures what the sync-free way costs where it is not needed.

A Criteo-sized step: tables of 1,000,000 rows x 16 (+ the 1-wide first-order table, same lookups), a batch of 4096
rows x 39 lookups drawn with a skew (a few hot rows, a long tail), 50 steps per variant, alternating variants twice;
the median step time of each.

    python bench/optimizer_step.py [--rows 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_json  # noqa: E402

from deepfm_tuner.model.optim import RowSparseAdam  # noqa: E402


def median_step_ms(rows: int, width: int, lookups: int, sync_free: bool, steps: int = 50) -> float:
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(rows, width) * 0.01)
    first_order = torch.nn.Parameter(torch.zeros(rows, 1))
    optimizer = RowSparseAdam([table, first_order], lr=1e-3, sync_free=sync_free)
    times = []
    for _ in range(steps):
        index = (torch.rand(lookups) ** 3 * rows).long()[None]  # skewed: x^3 puts most lookups on low rows
        table.grad = torch.sparse_coo_tensor(index, torch.randn(lookups, width), (rows, width))
        first_order.grad = torch.sparse_coo_tensor(table.grad._indices(), torch.randn(lookups, 1), (rows, 1))
        started = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lookups = 4096 * 39
    results: dict = {"machine": machine(), "rows": args.rows, "lookups_per_step": lookups, "bincount_ms": [],
                     "sync_free_ms": []}
    for _ in range(2):
        for sync_free in (False, True):
            key = "sync_free_ms" if sync_free else "bincount_ms"
            results[key].append(median_step_ms(args.rows, 16, lookups, sync_free))
    results["ratio_sync_free_to_bincount"] = min(results["sync_free_ms"]) / min(results["bincount_ms"])
    print({k: v for k, v in results.items() if k != "machine"})
    write_json(results, "optimizer_step.json", args.out)


if __name__ == "__main__":
    main()
