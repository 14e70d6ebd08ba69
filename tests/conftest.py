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

# Every test runs under a resident-memory allowance (tests/memory_watchdog.py), so a regression that allocates
# without bound (a memory bomb through the neighbour graph, say) fails instead of taking the machine down:
# MemoryError in the test that grows its process by more than TEST_MEMORY_GB (a test that needs more says so with
# @pytest.mark.memory_gb(N)), the test process killed above 3/4 of the machine's memory. Subprocesses are not
# watched (the robustness corpus caps its children's address space itself).
TEST_MEMORY_GB = 6


def _start_watchdog(gb: float):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from memory_watchdog import MemoryWatchdog, physical_memory

    return MemoryWatchdog(int(gb * 2**30), int(0.75 * physical_memory())).start()


WATCHDOG = _start_watchdog(TEST_MEMORY_GB)


@pytest.fixture(autouse=True)
def _memory_allowance(request):
    """Give each test its allowance above what the process holds when it starts."""
    marker = request.node.get_closest_marker("memory_gb")
    WATCHDOG.start_test(int(marker.args[0] * 2**30) if marker else None)
    yield


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
