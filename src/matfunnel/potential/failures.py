"""What a potential says when a batch fails for want of memory, and the labels ``predict`` names structures by."""

from __future__ import annotations

from collections.abc import Sequence

#: phrases of torch's and the CUDA allocator's out-of-memory errors
_OOM = ("can't allocate memory", "out of memory", "not enough memory", "failed to allocate", "DefaultCPUAllocator",
        "CUDA error: out of memory")


def is_memory_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (``MemoryError``, torch's ``OutOfMemoryError`` or allocator error).

    Parameters
    ----------
    exc
        The exception raised while evaluating a batch.

    Returns
    -------
    bool
        True when a smaller batch (or more memory) may succeed.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(p.lower() in text.lower() for p in _OOM)


def out_of_memory(n_atoms: int, exc: BaseException) -> str:
    """The problem to report for a structure that ran out of memory on its own (the allocator's text left out)."""
    return (f"out of memory while evaluating its {n_atoms} atoms alone ({type(exc).__name__}); it does not fit in "
            "the memory this process may use")


def labels_for_predict(labels: Sequence[str | None] | None, n: int) -> list[str | None]:
    """``labels`` as a list of ``n`` (``[None] * n`` when not given); a ``ValueError`` when it does not match."""
    if labels is None:
        return [None] * n
    if isinstance(labels, str):
        raise ValueError("labels must be a list with one label per structure, not a string")
    out = [None if lab is None else str(lab) for lab in labels]
    if len(out) != n:
        raise ValueError(f"labels has {len(out)} entries for {n} structures")
    return out
