"""Cheap jobflow jobs run by FireWorks workers in tests/fireworks (imported by worker
subprocesses through PYTHONPATH, so keep this module free of test-only imports).

Every job appends ``tag pid`` to ``log`` when it *starts*, so a test can count executions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jobflow import Flow, Response, job


def _record(log: str, tag: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{tag} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


@job
def square(x: float, log: str, tag: str, pause: float = 0.2) -> float:
    _record(log, tag)
    time.sleep(pause)
    return x * x


@job(name="mlip relax (fake)", data="trajectories")
def fake_relax(x: float, log: str, tag: str) -> dict:
    """Named like an MLIP job -> 'gpu'; its trajectory goes to the additional store."""
    _record(log, tag)
    time.sleep(0.2)
    return {"energy": -float(x), "trajectories": [[float(x) - i * 0.1 for i in range(200)]]}


@job(name="dft static (fake)")
def fake_dft(x: float, log: str, tag: str) -> float:
    _record(log, tag)
    return float(x) + 0.5


@job
def has_mp_key(log: str, tag: str) -> bool:
    """Reads the key from the worker's environment (as real jobs must) without returning it."""
    _record(log, tag)
    return bool(os.environ.get("MP_API_KEY"))


@job
def fan_out(n: int, log: str, tag: str) -> Response:
    """Dynamic: replaces itself by ``n`` fake relaxations + a sum (inherit this job's category)."""
    _record(log, tag)
    children = [fake_relax(i, log, f"{tag}-child{i}") for i in range(n)]
    total = add_all([c.output["energy"] for c in children], log, f"{tag}-sum")
    return Response(replace=Flow([*children, total], output=total.output))


@job
def add_all(values: list, log: str, tag: str) -> float:
    _record(log, tag)
    return float(sum(values))


@job
def slow_once(x: float, log: str, tag: str, marker: str, seconds: float = 120) -> float:
    """First run: touch ``marker`` and sleep (to be killed); any later run returns at once."""
    _record(log, tag)
    m = Path(marker)
    if not m.exists():
        m.write_text("started")
        time.sleep(seconds)
    return x + 1


@job
def flaky(x: float, log: str, tag: str, fixed_marker: str) -> float:
    """Raises until ``fixed_marker`` exists."""
    _record(log, tag)
    if not Path(fixed_marker).exists():
        raise RuntimeError(f"deliberate failure of {tag}: input {x} rejected")
    return x * 10


def executions(log: str | Path) -> list[str]:
    p = Path(log)
    return [line.split()[0] for line in p.read_text().splitlines()] if p.exists() else []
