"""Per-device calibration of a potential's memory model, measured once and cached.

Batches are packed by estimated work items (directed edges + angles) against a memory budget, at
``bytes_per_item`` each. That figure depends on the device, the code path (fused CPU kernels, Triton,
pure torch) and the dtype, so it is measured on the machine itself: the peak memory of one forward +
backward pass over two probe cells of known size, whose difference gives the bytes per item (the fixed
part, weights and buffers, cancels). On a GPU the peak is ``torch.cuda.max_memory_allocated``; on the
CPU it is the peak resident size (``VmHWM``) of a child process, the only exact peak there, so the
measurement costs a few seconds once per machine.

Results are kept in ``$MATFUNNEL_CACHE/calibration.json`` (default ``~/.cache/matfunnel``), keyed by the
potential, its code path, the dtype, the device's name and the torch version.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matfunnel.potential.memprobe import ProbeSpec

log = logging.getLogger(__name__)

CACHE_ENV = "MATFUNNEL_CACHE"
#: measured bytes per item are multiplied by this for the budget (allocator slack, other cells' shapes)
MARGIN = 1.12
#: a measurement outside this range is treated as failed (the built-in estimate is kept)
PLAUSIBLE = (500, 2_000_000)


def cache_file() -> Path:
    """The calibration cache: ``$MATFUNNEL_CACHE/calibration.json`` (default ``~/.cache/matfunnel``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "matfunnel") / "calibration.json"


def device_name(device) -> str:
    """The device's model name: the GPU's, or the CPU's from ``/proc/cpuinfo`` (else ``platform``'s)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def load(key: str) -> dict | None:
    """The cached calibration record under ``key``, or None (none cached, or the cache unreadable)."""
    try:
        return json.loads(cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def save(key: str, record: dict) -> None:
    """Store ``record`` under ``key`` in the cache (atomically; a warning if the cache is not writable)."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = record
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: concurrent workers never read half a file
    except OSError as exc:  # a read-only home: the measurement is still used in this process
        log.warning("could not save the memory calibration to %s: %s", path, exc)


def slope(points: Sequence[tuple[int, int]]) -> float:
    """Bytes per item from (items, peak bytes) of two probes: the fixed part cancels."""
    pts = sorted(points)
    (n0, b0), (n1, b1) = pts[0], pts[-1]
    if n1 <= n0:
        raise ValueError("the probes must differ in size")
    return (b1 - b0) / (n1 - n0)


def record(points: Sequence[tuple[int, int]], how: str) -> dict:
    """A calibration record from the probes' (items, peak bytes); ValueError when the slope is implausible."""
    per_item = slope(points)
    if not PLAUSIBLE[0] <= per_item <= PLAUSIBLE[1]:
        raise ValueError(f"implausible {per_item:.0f} bytes per item from {list(points)}")
    return {"bytes_per_item": round(per_item), "probes": [list(p) for p in points], "how": how,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}


class MemoryCalibrated:
    """Batch sizing from a measured memory model, for a potential that packs batches by work items.

    The potential sets ``name``, ``device``, ``dtype``, ``code_path``, ``bytes_per_item`` (its built-in
    estimate) and ``calibration = None``, and provides ``memory_probe(cell) -> items`` (one unchunked
    forward + backward), ``probe_spec()`` (how a child process builds it uncalibrated, for the CPU) and
    ``_set_budget()`` (derives its item budget from ``bytes_per_item``).
    """

    name: str
    device: str
    dtype: torch.dtype
    code_path: str
    bytes_per_item: int
    calibration: dict | None
    #: GB that must be available for the CPU probes at their normal size (else the small pair)
    probe_gb: float = 4.0

    if TYPE_CHECKING:  # provided by the potential (a definition here would shadow ItemBudget's in the MRO)

        def probe_spec(self) -> ProbeSpec:
            """How a child process builds this potential uncalibrated, for the CPU probes."""
            ...

        def _set_budget(self) -> None:
            """Derive the item budget from ``bytes_per_item``."""
            ...

    def calibration_key(self) -> str:
        """The cache key: potential name, code path, dtype, device name and torch version."""
        dtype = str(self.dtype).split(".")[-1]
        return f"{self.name}:{self.code_path}:{dtype}:{device_name(self.device)}:torch-{torch.__version__}"

    def _measure_memory(self) -> list[tuple[int, int]]:
        from matfunnel.potential import memprobe

        if str(self.device).startswith("cuda"):
            return memprobe.measure_cuda(self)
        spec = self.probe_spec()
        scale = 2 if str(self.dtype).endswith("float64") else 1
        spec.sizes = memprobe.cpu_sizes(self.probe_gb * scale)
        return memprobe.measure_cpu(spec)

    def calibrate(self, force: bool = False) -> dict | None:
        """Use this device's measured bytes per work item for batch sizing, from the cache or measured now.

        Measured once per device and code path; ``force`` measures again. Returns the record, or None when
        measuring failed (a warning; the built-in estimate stays).
        """
        key = self.calibration_key()
        rec, source = (None if force else load(key)), "cache"
        if rec is None:
            gpu = str(self.device).startswith("cuda")
            try:
                rec = record(self._measure_memory(),
                             "cuda max_memory_allocated" if gpu else "child process peak RSS")
                source = "measured"
            except Exception as exc:  # noqa: BLE001 - any failure: keep the estimate, say so
                log.warning("memory calibration of %s failed (%s: %s); using %d bytes per item",
                            key, type(exc).__name__, exc, self.bytes_per_item)
                return None
            save(key, rec)
        self.bytes_per_item = max(1, int(rec["bytes_per_item"] * MARGIN))
        self._set_budget()
        self.calibration = {**rec, "key": key, "source": source}
        return self.calibration


def default_budget(device) -> int:
    """Bytes one batch may use: half the free GPU memory, or 1/8 of the available RAM (1-4 GiB) on CPU."""
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.5)
    try:
        import psutil

        avail = psutil.virtual_memory().available
    except Exception:  # noqa: BLE001
        avail = 16 << 30
    return int(min(max(avail // 8, 1 << 30), 4 << 30))
