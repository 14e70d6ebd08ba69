"""What model produced a result: name, package version and a checksum of the weights."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import torch

#: package (import name) -> distribution name, where they differ
DISTRIBUTIONS = {"torch_sim": "torch-sim-atomistic", "matfunnel": "matfunnel"}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def parameters_sha256(module) -> str:
    """SHA-256 of a torch module's state dict (names, shapes, dtypes and values, in order)."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.dtype == torch.bfloat16 or t.dtype == torch.bool:
            t = t.to(torch.float32)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return None


def model_info(potential) -> dict:
    """The provenance record of ``potential`` (see :meth:`Potential.model_info`)."""
    package = getattr(potential, "package", None) or type(potential).__module__.split(".")[0]
    weights = getattr(potential, "weights_file", None)
    checksum, source = None, None
    if weights and Path(weights).is_file():
        checksum, source = file_sha256(weights), "file"
    else:
        module = getattr(potential, "model", None)
        if module is not None and hasattr(module, "state_dict"):
            try:
                checksum, source = parameters_sha256(module), "parameters"
            except Exception:  # noqa: BLE001 - exotic parameter types: no checksum rather than no result
                checksum = None
    return {"name": getattr(potential, "name", type(potential).__name__), "package": package,
            "version": _version(package), "weights_sha256": checksum, "weights_checksum_of": source}
