"""The row order of each training epoch: a full shuffle when the split fits in memory, else a block shuffle
that touches one block of a memory-mapped split at a time; sized by the memory this process can still use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from deepfm_tuner.model.data.tensors import TensorData


def available_memory() -> int:
    """Bytes this process can still use: the machine's available memory, or less under a cgroup memory cap
    (v2 memory.max, v1 memory.limit_in_bytes) as containers and schedulers set."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in _cgroup_memory_files():
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            available = min(available, max(0, int(limit) - usage))
    return available


def _cgroup_memory_files() -> list[tuple[str, str]]:
    files = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files.append((f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup{path}/memory.current"))
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path}"
            files.append((f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes"))
    return files


SHUFFLE_BLOCK_BYTES = 256 << 20  # a block shuffle permutes rows inside ~256 MiB of inputs at a time


def shuffle_block_rows(data: TensorData, shuffle: str = "auto") -> int:
    """Rows per shuffle block: the whole split (a full shuffle) when it fits in half the memory left, else
    blocks of SHUFFLE_BLOCK_BYTES, so an epoch over a mapped split larger than memory touches one block's
    pages at a time instead of the whole file at random."""
    whole = len(data)
    if shuffle == "full" or (shuffle == "auto" and data.nbytes <= available_memory() // 2):
        return max(1, whole)
    return max(1, min(whole, SHUFFLE_BLOCK_BYTES // max(1, data.row_bytes)))


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, block_rows: int) -> Iterator[torch.Tensor]:
    """Row indices of each batch of one epoch: every row exactly once. Blocks of `block_rows` consecutive rows
    are visited in random order and rows are permuted inside each block; with one block (block_rows >= n) this
    is a full shuffle, the same order as `torch.randperm(n)`."""
    if block_rows >= n:
        yield from torch.randperm(n, generator=generator).split(batch_size)
        return
    n_blocks = -(-n // block_rows)
    carry = torch.empty(0, dtype=torch.long)
    for block in torch.randperm(n_blocks, generator=generator).tolist():
        start = block * block_rows
        rows = torch.randperm(min(block_rows, n - start), generator=generator) + start
        rows = torch.cat([carry, rows]) if len(carry) else rows
        full = len(rows) - len(rows) % batch_size
        if full:
            yield from rows[:full].split(batch_size)
        carry = rows[full:]
    if len(carry):
        yield carry
