"""Results identified by their inputs, so a killed campaign resumes without recomputing.

A result is keyed by a content hash of what determines it (the structure, the potential,
the settings) rather than by jobflow's fresh UUIDs. Each finished unit of work (one structure's
relaxation, one DFT calculation) is committed to an SQLite file as soon as it is done, so a
SIGKILL loses at most the unit in progress.

The cache is active when ``MATFUNNEL_RESULT_CACHE`` names a file (``matfunnel run`` sets it to
``<run>/cache.sqlite``); FireWorks deployments rely on FireWorks' own bookkeeping instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
from monty.json import MontyDecoder, MontyEncoder, jsanitize
from pymatgen.core import Structure

ENV = "MATFUNNEL_RESULT_CACHE"
SCHEMA = 1


def structure_fingerprint(s: Structure | dict) -> list:
    """Lattice, species and fractional coordinates, rounded: what a calculation depends on."""
    if isinstance(s, dict):
        s = Structure.from_dict(s)
    return [
        np.round(s.lattice.matrix, 8).tolist(),
        [str(sp) for sp in s.species],
        np.round(s.frac_coords, 8).tolist(),
        float(s.charge or 0.0),
    ]


def content_key(kind: str, *parts: Any) -> str:
    """A stable SHA-256 of ``kind`` and JSON-able ``parts``."""
    payload = json.dumps([SCHEMA, kind, jsanitize(list(parts), strict=False, enum_values=True)],
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class ResultCache:
    """A small SQLite key -> JSON store, safe for several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # several processes opening a new file at once: switching it to WAL can fail with "database is locked"
        # at once, without SQLite's busy wait, so that one statement is retried here
        deadline = time.monotonic() + 60
        for attempt in itertools.count():
            try:
                self._con.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(min(0.01 * 2**attempt, 0.5))
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, kind TEXT, value TEXT, created REAL)"
        )

    def get(self, key: str) -> Any | None:
        row = self._con.execute("SELECT value FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0], cls=MontyDecoder)

    def put(self, key: str, kind: str, value: Any) -> None:
        text = json.dumps(value, cls=MontyEncoder)
        self._con.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (key, kind, text, time.time()))

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self._con.execute("SELECT COUNT(*) FROM results WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        self._con.close()


_open: dict[str, ResultCache] = {}


def active_cache() -> ResultCache | None:
    """The cache named by ``MATFUNNEL_RESULT_CACHE`` (one connection per process), or None."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if path not in _open:
        _open[path] = ResultCache(path)
    return _open[path]
