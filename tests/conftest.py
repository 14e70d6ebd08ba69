"""Shared fixtures. Tests use the real CHGNet 0.3.0 weights shipped in the chgnet wheel."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# the per-device memory calibration is measured once per test session into a fresh cache, never read from or
# written to the user's (subprocesses of the tests inherit it)
os.environ["MATFUNNEL_CACHE"] = tempfile.mkdtemp(prefix="matfunnel-cache-")
atexit.register(shutil.rmtree, os.environ["MATFUNNEL_CACHE"], ignore_errors=True)

# The whole suite runs under a resident-memory cap (tests/memory_watchdog.py), so a regression that allocates
# without bound (a memory bomb through the neighbour graph, say) fails instead of taking the machine down:
# MemoryError in the test above the cap, the test process killed above 1.5 x the cap. Subprocesses are not
# watched (the robustness corpus caps its children's address space itself).
SUITE_MEMORY_CAP_GB = 8


def _start_watchdog(gb: float):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from memory_watchdog import MemoryWatchdog

    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return MemoryWatchdog(int(min(gb * 2**30, 0.5 * phys))).start()


WATCHDOG = _start_watchdog(SUITE_MEMORY_CAP_GB)


@pytest.fixture(scope="session")
def reference_potential():
    from matfunnel.potential import load_potential

    return load_potential("chgnet-reference")


@pytest.fixture
def rng():
    """Fresh random inputs every run; the seed is printed so a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)
