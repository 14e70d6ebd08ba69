"""Shared fixtures. Tests use the real CHGNet 0.3.0 weights shipped in the chgnet wheel."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest

# the per-device memory calibration is measured once per test session into a fresh cache, never read from or
# written to the user's (subprocesses of the tests inherit it)
os.environ["MATFUNNEL_CACHE"] = tempfile.mkdtemp(prefix="matfunnel-cache-")
atexit.register(shutil.rmtree, os.environ["MATFUNNEL_CACHE"], ignore_errors=True)


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
