"""Shared fixtures. Tests use the real CHGNet 0.3.0 weights shipped in the chgnet wheel."""

from __future__ import annotations

import atexit
import os
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

# the per-device memory calibration is measured once per test session into a fresh cache, never read from or
# written to the user's (subprocesses of the tests inherit it)
os.environ["MATFUNNEL_CACHE"] = tempfile.mkdtemp(prefix="matfunnel-cache-")
atexit.register(shutil.rmtree, os.environ["MATFUNNEL_CACHE"], ignore_errors=True)

# The whole suite runs under an address-space cap, so a regression that allocates without bound (a memory bomb
# through the neighbour graph, say) fails with MemoryError / an allocation error instead of taking the machine
# down. Subprocesses of the tests inherit it. Address space, not resident memory: torch's CUDA build maps about
# 3 GB of libraries, so the cap is that much above the budget. Not applied where a GPU is visible (CUDA reserves
# address space the size of the device's memory).
SUITE_MEMORY_CAP_GB = 14


def _cap_address_space(gb: float) -> None:
    if Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists():
        return
    phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cap = int(min(gb * 2**30, 0.9 * phys + 4 * 2**30))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


_cap_address_space(SUITE_MEMORY_CAP_GB)


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
