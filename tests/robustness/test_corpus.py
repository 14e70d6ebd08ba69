"""The hostile-input corpus: every case gives one clear error or the correct result, inside its caps.

Each case runs in a forked child (``harness.run_case``) with its address space capped, so a regression that
allocates without bound fails here instead of taking the machine down.
"""

from __future__ import annotations

import time

import harness
import pytest

CASES = harness.all_cases()


def test_corpus_is_large_enough():
    """The issue asks for at least 100 hostile cases, over structures, files, specs and runs."""
    assert len(CASES) >= 100, len(CASES)
    assert {c.group for c in CASES} >= {"structures", "files", "specs", "runs"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path):
    o = harness.run_case(case, tmp_path)
    want = "correct" if case.expect == "ok" else "clear error"
    assert o.outcome == want, f"{case.group}/{case.id}: {o.outcome}: {o.detail}\n{o.extra.get('traceback', '')}"
    if case.quick:
        assert o.wall < 1.0, f"{case.id}: rejected in {o.wall:.2f} s (over 1 s)"
        assert o.rss_mb < 1024, f"{case.id}: used {o.rss_mb:.0f} MB (over 1 GB)"


def test_suite_runs_under_a_memory_cap():
    """tests/conftest.py watches each test's resident memory: allocating past the cap fails the test that does it.

    Checked with the cap lowered to 300 MB above what the process holds now (then put back).
    """
    import numpy as np

    from memory_watchdog import MemoryCapExceeded, MemoryWatchdog

    dog = MemoryWatchdog.active
    assert dog is not None and dog.allowance <= 8 * 2**30 and dog.cap - dog.base == dog.allowance
    saved, dog.cap = dog.cap, dog.rss() + 300 * 2**20
    held = []
    try:
        with pytest.raises(MemoryCapExceeded, match="memory cap"):
            for _ in range(200):  # 200 x 20 MB = 4 GB, far past the lowered cap
                held.append(np.ones(20 * 2**20 // 8))
                time.sleep(0.005)
        assert len(held) * 20 < 200 + 300 + 200, f"cap noticed only after {len(held) * 20} MB"
    finally:
        held.clear()
        dog.cap = saved
