"""Hostile-input harness: each case runs in a forked child under a memory and a time cap, and its outcome is classified.

A case is one hostile input fed through one public entry point (``predict``, ``RelaxMaker``, the structure
loaders, ``load_spec``, ``matfunnel run``). It says what a demanding user expects: either one clear error whose
message names the input and the problem (``expect="error"`` with the substrings in ``match``), or a correct
result (``expect="ok"`` with a ``check`` that returns ``None`` when the result is right and what is wrong
otherwise).

Outcomes (the audit's table):

- ``correct``: expected a result and got the right one;
- ``clear error``: expected an error and got one naming the input and the problem;
- ``vague error``: an error without the name or the problem, or an error where a result was due;
- ``crash``: an exception of a bug type (``IndexError``, ``ZeroDivisionError``, ``LinAlgError``, ...), a
  traceback printed by the CLI, a child killed by a signal or the memory cap;
- ``hang``: the child ran past its time cap;
- ``silent wrong``: a wrong or partial result, or a result where an error was due.

The child is forked from a parent that has imported the libraries but run no torch computation (so no thread
pool is inherited). Its address space is capped at what the parent had plus ``mem_gb``, so a memory bomb ends as
a ``MemoryError`` or a kill, never as the machine's OOM killer. ``wall`` (the case's ``run`` only, not its
``setup``) and ``rss_mb`` (the child's peak resident memory above the parent's) are reported for every case.

Run ``python tests/robustness/harness.py`` for the outcome table of the whole corpus (``--json`` to keep it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("correct", "clear error", "vague error", "crash", "hang", "silent wrong")
GOOD = ("correct", "clear error")

# exception types that mean "the code did not expect this input", whatever their message says
BUG_TYPES: tuple[type[BaseException], ...] = (
    ZeroDivisionError, IndexError, KeyError, AttributeError, TypeError, NameError, AssertionError,
    MemoryError, RecursionError, UnboundLocalError, np.linalg.LinAlgError, sqlite3.Error, UnicodeDecodeError,
    OverflowError, StopIteration,
)


@dataclass(frozen=True)
class Case:
    """One hostile input and the behaviour a demanding user expects from it.

    ``setup(tmp)`` prepares what is not under test (files, a loaded potential) and is not timed; ``run(tmp,
    prepared)`` is the call under test. ``quick`` cases must finish ``run`` in under a second and under 1 GB.
    """

    id: str
    group: str
    run: Callable[[Path, Any], Any]
    expect: str = "error"
    match: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    setup: Callable[[Path], Any] | None = None
    seconds: float = 120.0
    mem_gb: float = 3.0
    quick: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        if self.expect not in ("error", "ok"):
            raise ValueError(f"case {self.id}: expect must be 'error' or 'ok'")
        if self.expect == "error" and not self.match:
            raise ValueError(f"case {self.id}: an expected error needs 'match' (the input's name and the problem)")
        if self.expect == "ok" and self.check is None:
            raise ValueError(f"case {self.id}: an expected result needs a 'check'")


@dataclass
class Outcome:
    """What one case did."""

    id: str
    group: str
    outcome: str
    detail: str = ""
    wall: float = float("nan")
    rss_mb: float = float("nan")
    extra: dict = field(default_factory=dict)


class CliFailed(Exception):
    """The CLI returned a non-zero exit code; the message is what it printed."""

    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err
        super().__init__(f"exit {rc}: {err.strip() or out.strip()}")


def cli(argv: list[str]) -> tuple[int, str, str]:
    """Run ``matfunnel`` in-process; return ``(rc, stdout, stderr)``; raise :class:`CliFailed` when rc != 0.

    An exception that escapes ``main`` propagates (it is what a user would see as a traceback).
    """
    from matfunnel.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 1
    rc = int(rc or 0)
    if rc != 0:
        raise CliFailed(rc, out.getvalue(), err.getvalue())
    return rc, out.getvalue(), err.getvalue()


def classify(case: Case, value: Any = None, exc: BaseException | None = None) -> tuple[str, str]:
    """The outcome of ``case`` given what its ``run`` returned or raised."""
    if exc is not None:
        msg = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, BUG_TYPES) or "Traceback (most recent call last)" in msg:
            return "crash", msg[:500]
        if "allocate" in msg.lower() and "memory" in msg.lower():
            return "crash", msg[:500]
        if case.expect == "ok":
            return "vague error", f"a result was due: {msg[:500]}"
        text = msg.lower()
        missing = [m for m in case.match if m.lower() not in text]
        if missing:
            return "vague error", f"message lacks {missing}: {msg[:500]}"
        return "clear error", msg[:300]
    if case.expect == "error":
        return "silent wrong", f"no error; returned {_short(value)}"
    try:
        problem = case.check(value) if case.check else None
    except Exception as check_exc:  # noqa: BLE001 - a result the check cannot read is a wrong result
        problem = f"check failed on the result ({type(check_exc).__name__}: {check_exc})"
    return ("correct", "") if problem is None else ("silent wrong", str(problem)[:500])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(case: Case, tmp: Path, wfd: int) -> None:
    """Body of the forked child: cap memory, run the case, send (outcome, detail, wall, extra) to the parent."""
    cap = _vm_size_bytes() + int(case.mem_gb * 2**30)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    extra: dict = {}
    wall = float("nan")
    try:
        prepared = case.setup(tmp) if case.setup else None
        t0 = time.perf_counter()
        try:
            value = case.run(tmp, prepared)
        except BaseException as exc:  # noqa: BLE001 - every exception is an outcome to classify
            wall = time.perf_counter() - t0
            outcome, detail = classify(case, exc=exc)
            if outcome == "crash":
                extra["traceback"] = "".join(traceback.format_exception(exc))[-3000:]
        else:
            wall = time.perf_counter() - t0
            outcome, detail = classify(case, value=value)
    except BaseException as exc:  # noqa: BLE001 - the setup itself failed: the harness, not the code, is wrong
        outcome, detail = "crash", f"setup failed: {type(exc).__name__}: {exc}"
        extra["traceback"] = "".join(traceback.format_exception(exc))[-3000:]
    payload = pickle.dumps((outcome, detail, wall, extra))
    with os.fdopen(wfd, "wb") as f:
        f.write(payload)


def run_case(case: Case, tmp: Path | None = None) -> Outcome:
    """Run ``case`` in a forked child under its caps and classify what happened."""
    tmp = Path(tmp or tempfile.mkdtemp(prefix=f"robust-{case.id}-"))
    tmp.mkdir(parents=True, exist_ok=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            _child(case, tmp, wfd)
        except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    deadline = time.monotonic() + case.seconds
    status, rusage = 0, None
    chunks: list[bytes] = []
    os.set_blocking(rfd, False)
    while True:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(rfd, 1 << 16):
                chunks.append(chunk)
        done, status, rusage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, rusage = os.wait4(pid, 0)
            os.close(rfd)
            return Outcome(case.id, case.group, "hang", f"still running after {case.seconds:.0f} s",
                           rss_mb=max(0.0, rusage.ru_maxrss / 1024 - rss0))
        time.sleep(0.01)
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(rfd, 1 << 16):
            chunks.append(chunk)
    os.close(rfd)
    rss = max(0.0, rusage.ru_maxrss / 1024 - rss0) if rusage else float("nan")
    if not chunks:
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exited {os.WEXITSTATUS(status)} without a result")
        return Outcome(case.id, case.group, "crash", f"child {how} (memory cap {case.mem_gb} GB?)", rss_mb=rss)
    outcome, detail, wall, extra = pickle.loads(b"".join(chunks))
    return Outcome(case.id, case.group, outcome, detail, wall, rss, extra)


def all_cases() -> list[Case]:
    """Every case of the corpus: the ``CASES`` lists of the ``cases_*.py`` modules beside this file."""
    import importlib

    here = Path(__file__).parent
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    cases: list[Case] = []
    for path in sorted(here.glob("cases_*.py")):
        cases.extend(importlib.import_module(path.stem).CASES)
    ids = Counter(c.id for c in cases)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise ValueError(f"duplicate case ids: {dup}")
    return cases


def table(outcomes: list[Outcome]) -> str:
    """The outcome table (cases per outcome, per group and in all)."""
    groups = sorted({o.group for o in outcomes})
    head = "| outcome | " + " | ".join(groups) + " | all |"
    lines = [head, "|" + "---|" * (len(groups) + 2)]
    for name in OUTCOMES:
        row = [sum(o.outcome == name and o.group == g for o in outcomes) for g in groups]
        lines.append(f"| {name} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    lines.append("| **cases** | " + " | ".join(str(sum(o.group == g for o in outcomes)) for g in groups)
                 + f" | {len(outcomes)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the corpus (or the cases whose id contains ``--only``) and print the table and every bad outcome."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the cases whose id contains this")
    p.add_argument("--group", default="", help="run one group")
    p.add_argument("--json", default=None, help="write every outcome to this file")
    args = p.parse_args(argv)
    import pymatgen.core  # noqa: F401

    import matfunnel.potential  # noqa: F401 - imported once in the parent, shared by every child

    cases = [c for c in all_cases() if args.only in c.id and (not args.group or c.group == args.group)]
    outcomes = []
    for c in cases:
        o = run_case(c)
        outcomes.append(o)
        flag = "" if o.outcome in GOOD and (not c.quick or (o.wall < 1 and o.rss_mb < 1024)) else "  <-- "
        print(f"{o.outcome:13s} {o.wall:7.2f} s {o.rss_mb:8.0f} MB  {c.group}/{c.id}{flag} {o.detail[:160]}",
              flush=True)
    print()
    print(table(outcomes))
    worst = sorted(outcomes, key=lambda o: -(o.rss_mb if o.rss_mb == o.rss_mb else 0))[:5]
    print("\nlargest memory (peak RSS above the parent): "
          + ", ".join(f"{o.id} {o.rss_mb:.0f} MB" for o in worst))
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1, default=str))
    return 0 if all(o.outcome in GOOD for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
