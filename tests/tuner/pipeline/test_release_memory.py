"""Before the refits and promotion, the study process hands back the heap that many trials freed (glibc keeps
freed mid-size blocks for reuse), so it does not add to the peak of training on every row (issue 16's RSS)."""

from __future__ import annotations

import ctypes.util
import os
import sys

import numpy as np
import pytest

from deepfm_tuner.tuner.pipeline.tune import release_freed_memory


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or "musl" in (ctypes.util.find_library("c") or ""),
                    reason="malloc_trim is glibc's")
def test_the_heap_freed_by_many_small_blocks_is_handed_back():
    lift = np.ones(400_000)  # freeing a 3.2 MB mapped block lifts glibc's mmap threshold: smaller blocks use the heap
    del lift
    blocks = [np.ones(60_000) for _ in range(2_000)]  # ~960 MB in 480 KB blocks, freed all but every 50th
    kept = blocks[::50]
    del blocks
    before = rss_mib()
    release_freed_memory()
    assert before - rss_mib() > 300, (before, rss_mib())
    assert len(kept) == 40
