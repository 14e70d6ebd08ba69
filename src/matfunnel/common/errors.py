"""Errors raised for bad input structures, and which failures may pass on a retry."""

from __future__ import annotations


class StructureError(ValueError):
    """A structure cannot be evaluated; the message names the structure and the problem."""

    def __init__(self, label: str, problem: str):
        self.label = label
        self.problem = problem
        super().__init__(f"structure {label!r}: {problem}")


class ResourceError(StructureError):
    """A structure does not fit the memory this process may use: not a fault of the structure, so a retry may pass.

    The message names the structure, the problem and says that it is a resource limit. Results marked with it are
    retried on a rerun (see :func:`is_transient`), unlike geometry rejections, which are final.
    """

    #: what every message of this class ends with (and what :func:`is_transient` looks for)
    MARK = "a resource limit, not a fault of the structure"

    def __init__(self, label: str, problem: str):
        super().__init__(label, f"{problem} ({self.MARK})")


#: phrases of a failure that may pass on a retry (memory, devices): anything else the potential reports about a
#: structure (a geometry or element rejection) is final
_TRANSIENT = (ResourceError.MARK, "out of memory", "memory budget", "MemoryError", "RuntimeError", "CUDA",
              "device-side")


def is_transient(message: str | None) -> bool:
    """Whether a failure reported for a structure may pass on a retry (memory or device trouble, an exception).

    Parameters
    ----------
    message
        The failure's message as the potential reported it (``None``: no failure).

    Returns
    -------
    bool
        ``True`` for resource failures and exceptions raised by the model; ``False`` for rejections of the
        structure itself (bad geometry, unsupported elements), which a rerun would only repeat.
    """
    if not message:
        return False
    return any(p in message for p in _TRANSIENT) or _raised(message)


def _raised(message: str) -> bool:
    """Whether ``message`` reports an exception (``SomeError: ...``) rather than a check's verdict."""
    import re

    return re.search(r"\b[A-Z]\w*(Error|Exception|Failure)\b:", message) is not None
