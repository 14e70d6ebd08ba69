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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "MATFUNNEL_CACHE"
#: measured bytes per item are multiplied by this for the budget (allocator slack, other cells' shapes)
MARGIN = 1.12
#: a measurement outside this range is treated as failed (the built-in estimate is kept)
PLAUSIBLE = (500, 100_000)


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "matfunnel") / "calibration.json"


def device_name(device) -> str:
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
    try:
        return json.loads(cache_file().read_text()).get(key)
    except (OSError, ValueError):
        return None


def save(key: str, record: dict) -> None:
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


def cuda_peak(run: Callable[[], int], device) -> tuple[int, int]:
    """(items, peak bytes allocated above the start) of ``run()``, which returns its number of items."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    items = run()
    torch.cuda.synchronize(dev)
    return items, torch.cuda.max_memory_allocated(dev) - base


def record(points: Sequence[tuple[int, int]], how: str) -> dict:
    per_item = slope(points)
    if not PLAUSIBLE[0] <= per_item <= PLAUSIBLE[1]:
        raise ValueError(f"implausible {per_item:.0f} bytes per item from {list(points)}")
    return {"bytes_per_item": round(per_item), "probes": [list(p) for p in points], "how": how,
            "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
