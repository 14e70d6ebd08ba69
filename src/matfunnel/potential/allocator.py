"""Keep freed memory in the process instead of handing it back to the kernel (glibc, CPU).

A forward and backward pass of a potential allocates and frees hundreds of MB of activations. With
glibc's defaults every buffer above 32 MB is a fresh ``mmap``, and freed heap memory above the trim
threshold goes back to the kernel, so the next pass page-faults it in again and the kernel zeroes every
page: on the 2-core dev machine that was 100k-240k page faults and about 30% of the wall time of one
CHGNet evaluation of 2,000 atoms (see benchmarks/NOTES.md). :func:`keep_freed_memory` switches glibc to
serve large blocks from the heap and never trim it, so the memory of the largest batch stays mapped and is
reused, as PyTorch's CUDA caching allocator does on a GPU. The cost: the process's resident memory
stays at its peak.

It changes the whole process, so it is done once, on request (``ChgnetPotential(keep_memory=True)``, the
default on the CPU), and ``MATFUNNEL_KEEP_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX, M_ARENA_MAX = -1, -2, -4, -8
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the glibc settings once; True when they are in effect (False elsewhere or when disabled)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MATFUNNEL_KEEP_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all([
        mallopt(M_MMAP_MAX, 0),              # large blocks from the heap, not fresh mappings
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1),  # never give the heap's top back
        mallopt(M_TOP_PAD, 256 << 20),       # grow the heap in 256 MB steps
        mallopt(M_ARENA_MAX, 1),             # one arena, so every thread reuses the same memory
    ])
    _done = bool(ok)
    return _done
