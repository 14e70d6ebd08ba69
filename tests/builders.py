"""Small structure builders shared by the tests (imported as a plain module, not via conftest)."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure


def fcc(el: str, a: float) -> Structure:
    return Structure(Lattice.cubic(a), [el] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def b32_lial(a: float = 6.37) -> Structure:
    """NaTl-type (B32) LiAl, the known ground state of LiAl (primitive cell, 4 atoms)."""
    conv = Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Li", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return conv.get_primitive_structure()


def import_triton_for_tests():
    """Triton for the kernel tests: on a machine without CUDA, set ``TRITON_INTERPRET=1`` first (it must be set
    before triton is first imported: triton.language's own helpers are decorated then). Skips the calling test
    module when that is too late or triton is not installed. Returns ``(triton, device)``."""
    import os
    import sys

    import pytest
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        if sys.modules.get("triton") is not None and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("triton was imported before TRITON_INTERPRET=1 could be set; run this file on its own "
                        "or with TRITON_INTERPRET=1", allow_module_level=True)
        os.environ["TRITON_INTERPRET"] = "1"
    triton = pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")
    return triton, "cuda" if on_gpu else "cpu"
