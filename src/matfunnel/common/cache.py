"""Results identified by their inputs, so a killed campaign resumes without recomputing.

A result is keyed by a content hash of what determines it (the structure, the potential,
the settings) rather than by jobflow's fresh UUIDs. Each finished unit of work (one structure's
relaxation, one DFT calculation) is committed as soon as it is done, so a SIGKILL loses at most
the units in progress.

The makers take the cache as an argument (``result_cache``: an SQLite file path; ``matfunnel run`` passes
``<run>/cache.sqlite``). Without one, the user's configuration ``MATFUNNEL_RESULT_CACHE`` names it:

* a file path: an SQLite file, for one machine;
* a ``mongodb://`` (or ``mongodb+srv://``) URI: the ``result_cache`` collection of the URI's database
  (``matfunnel`` when the URI names none), for FireWorks workers on many nodes. A job that a killed
  worker left behind and that ``lpad detect_lostruns --rerun`` starts again reuses every structure
  that had finished. The URI may hold a password: export it in the worker's ``pre_rocket`` from a
  private file; it is never written to a log, a store or a Firework spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
from monty.json import MontyDecoder, MontyEncoder, jsanitize
from pymatgen.core import Structure

from matfunnel.common.structures import as_structure

ENV = "MATFUNNEL_RESULT_CACHE"
log = logging.getLogger(__name__)
SCHEMA = 1


def structure_fingerprint(s: Structure | dict) -> list:
    """Lattice, species and fractional coordinates, rounded: what a calculation depends on.

    Plus the atoms held fixed, for a structure with ``selective_dynamics``. Raises for a disordered structure.
    """
    s = as_structure(s)
    out = [
        np.round(s.lattice.matrix, 8).tolist(),
        [str(sp) for sp in s.species],
        np.round(s.frac_coords, 8).tolist(),
        float(s.charge or 0.0),
    ]
    sd = s.site_properties.get("selective_dynamics")
    if sd is not None:  # only then, so the keys of unconstrained structures stay what they were
        out.append([[bool(x) for x in np.broadcast_to(np.asarray(True if v is None else v), (3,))] for v in sd])
    return out


def result_key(kind: str, structure, settings: dict) -> str | None:
    """The cache key of a ``kind`` result of ``structure`` under ``settings``, or None.

    None when the input is not an ordered structure (disordered, not a structure at all): such a result is
    never cached.
    """
    try:
        return content_key(kind, structure_fingerprint(structure), settings)
    except Exception:  # noqa: BLE001 - whatever the fingerprint cannot read
        return None


def content_key(kind: str, *parts: Any) -> str:
    """A stable SHA-256 of ``kind`` and JSON-able ``parts``."""
    payload = json.dumps([SCHEMA, kind, jsanitize(list(parts), strict=False, enum_values=True)],
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class CacheError(ValueError):
    """A result cache cannot be used (it names the cache file and what to do)."""


def entry_check(key: str, kind: str, text: str) -> str:
    """The integrity check stored with each cached value: SHA-256 of its key, kind and JSON text."""
    return hashlib.sha256(f"{key}\0{kind}\0{text}".encode()).hexdigest()


_COLUMNS = ("key", "kind", "value", "created", "check_sum")


class ResultCache:
    """A small SQLite key -> JSON store, safe for several processes (WAL, busy timeout).

    Nothing in it is trusted blindly:

    * on open, the file is checked (``PRAGMA quick_check`` and the table's columns); a file that is not
      this cache or is corrupt is moved aside to ``<name>.corrupt-<time>`` with a warning naming both
      files, and an empty cache takes its place (its results are computed again);
    * each value is stored with a checksum of its key, kind and text; a value whose checksum does not match
      (copied under another key, edited, damaged) or that cannot be decoded is a miss, logged, never returned.

    Attributes
    ----------
    quarantined
        Where a corrupt file found on open was moved (None when the file was sound).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.quarantined: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"result cache {self.path}: cannot create its folder: {exc.strerror or exc}") from exc
        if self.path.is_dir():
            raise CacheError(f"result cache {self.path} is a folder, not a file; remove it or choose another path")
        problem = _check_file(self.path)
        if problem is not None:
            self.quarantined = _quarantine(self.path, problem)
        try:
            self._con = self._connect()
        except sqlite3.DatabaseError as exc:  # unwritable folder, full disk
            raise CacheError(f"result cache {self.path} cannot be opened: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # several processes opening a new file at once: switching it to WAL can fail with "database is locked"
        # at once, without SQLite's busy wait, so that one statement is retried here
        deadline = time.monotonic() + 60
        for attempt in itertools.count():
            try:
                con.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(min(0.01 * 2**attempt, 0.5))
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("CREATE TABLE IF NOT EXISTS results "
                    "(key TEXT PRIMARY KEY, kind TEXT, value TEXT, created REAL, check_sum TEXT)")
        columns = [r[1] for r in con.execute("PRAGMA table_info(results)")]
        if "check_sum" not in columns:  # a cache of an older matfunnel: its unchecked values are misses
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it just now
                con.execute("ALTER TABLE results ADD COLUMN check_sum TEXT")
        return con

    def get(self, key: str, kind: str | None = None) -> Any | None:
        """The value stored under ``key`` (and of kind ``kind`` when given), or None.

        A value that fails its check (not stored under this key, or damaged) or cannot be decoded is a miss.
        """
        try:
            row = self._con.execute("SELECT kind, value, check_sum FROM results WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            log.warning("result cache %s: cannot read the entry %s (%s); it is computed again", self.path,
                        key[:12], exc)
            return None
        if row is None:
            return None
        row_kind, text, check = row
        if kind is not None and row_kind != kind:
            log.warning("result cache %s: the entry %s is a %r result, not %r; ignored", self.path, key[:12],
                        row_kind, kind)
            return None
        if not isinstance(text, str) or check != entry_check(key, str(row_kind), text):
            log.warning("result cache %s: the entry %s does not match its key (no or wrong checksum); ignored, "
                        "computed again", self.path, key[:12])
            return None
        try:
            return json.loads(text, cls=MontyDecoder)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the entry is unusable
            log.warning("result cache %s: the entry %s cannot be decoded (%s: %s); ignored", self.path, key[:12],
                        type(exc).__name__, str(exc)[:100])
            return None

    def put(self, key: str, kind: str, value: Any) -> None:
        """Store ``value`` (a ``kind`` result) under ``key``, replacing any value there.

        A value that cannot be written (full disk, damaged file) is not cached: a warning, the run goes on.
        """
        text = json.dumps(value, cls=MontyEncoder)
        try:
            self._con.execute("INSERT OR REPLACE INTO results (key, kind, value, created, check_sum) "
                              "VALUES (?, ?, ?, ?, ?)", (key, kind, text, time.time(), entry_check(key, kind, text)))
        except sqlite3.DatabaseError as exc:
            log.warning("result cache %s: a %s result could not be stored (%s); it will not be reused on a rerun",
                        self.path, kind, exc)

    def count(self, kind: str | None = None) -> int:
        """The number of results stored, of kind ``kind`` only when given."""
        if kind is None:
            return self._con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        return self._con.execute("SELECT COUNT(*) FROM results WHERE kind = ?", (kind,)).fetchone()[0]

    def close(self) -> None:
        """Close the database connection."""
        self._con.close()


def _check_file(path: Path) -> str | None:
    """Why the SQLite file at ``path`` is not a sound result cache, or None (also when it does not exist)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        status = con.execute("PRAGMA quick_check").fetchone()
        if not status or status[0] != "ok":
            return f"integrity check: {status[0] if status else 'no answer'}"[:200]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "results" not in tables:
            return f"no results table (tables: {sorted(tables)[:5]})" if tables else None
        columns = [r[1] for r in con.execute("PRAGMA table_info(results)")]
        if columns[:4] != list(_COLUMNS[:4]):
            return f"unexpected columns {columns}"
    except sqlite3.Error as exc:
        # busy (another process is writing it) is not damage
        return None if "locked" in str(exc) or "busy" in str(exc) else str(exc)
    finally:
        con.close()
    return None


def _quarantine(path: Path, problem: str) -> Path:
    """Move the corrupt cache ``path`` (and its WAL files) aside; return where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        path.rename(dest)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(dest.with_name(dest.name + suffix))
    except OSError as exc:
        raise CacheError(f"result cache {path} is corrupt ({problem}) and cannot be moved aside "
                         f"({exc.strerror or exc}); delete it and run again") from exc
    log.warning("result cache %s is corrupt (%s): moved aside to %s; its results will be computed again",
                path, problem, dest)
    return dest


class MongoResultCache:
    """The same key -> JSON store in a MongoDB collection.

    A unique index on ``key``; writes are upserts, so two workers finishing the same structure leave one entry.
    """

    COLLECTION = "result_cache"

    def __init__(self, uri: str, collection: str = COLLECTION):
        import pymongo

        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, serverSelectionTimeoutMS=30_000)
        try:
            db = self._client.get_default_database()
        except pymongo.errors.ConfigurationError:  # the URI names no database
            db = self._client["matfunnel"]
        self._col = db[collection]
        self._col.create_index("key", unique=True)

    def get(self, key: str) -> Any | None:
        """The value stored under ``key``, or None."""
        doc = self._col.find_one({"key": key}, {"value": 1})
        return None if doc is None else json.loads(doc["value"], cls=MontyDecoder)

    #: a MongoDB document holds at most 16 MB: larger results (a long trajectory) are not cached
    MAX_BYTES = 15_000_000

    def put(self, key: str, kind: str, value: Any) -> None:
        """Store ``value`` (a ``kind`` result) under ``key``; a result over ``MAX_BYTES`` is skipped."""
        text = json.dumps(value, cls=MontyEncoder)
        if len(text) > self.MAX_BYTES:
            log.warning("a %s result of %.1f MB is not cached (MongoDB's document limit)", kind, len(text) / 1e6)
            return
        self._col.update_one({"key": key}, {"$set": {"kind": kind, "value": text, "created": time.time()}},
                             upsert=True)

    def count(self, kind: str | None = None) -> int:
        """The number of results stored, of kind ``kind`` only when given."""
        return self._col.count_documents({} if kind is None else {"kind": kind})

    def close(self) -> None:
        """Close the MongoDB client."""
        self._client.close()

    def __repr__(self) -> str:  # never the URI: it may hold a password
        return f"MongoResultCache({self._col.database.name}.{self._col.name})"


def is_mongo_uri(location: str) -> bool:
    """Whether ``location`` is a MongoDB URI (``mongodb://`` or ``mongodb+srv://``) rather than a file path."""
    return location.startswith(("mongodb://", "mongodb+srv://"))


def open_cache(location: str | Path) -> ResultCache | MongoResultCache:
    """The cache at ``location``: a MongoDB URI or an SQLite file path."""
    loc = str(location)
    return MongoResultCache(loc) if is_mongo_uri(loc) else ResultCache(loc)


_open: dict[str, ResultCache | MongoResultCache] = {}


def active_cache(location: str | Path | None = None) -> ResultCache | MongoResultCache | None:
    """The result cache at ``location`` (one connection per process and location), or None.

    Parameters
    ----------
    location
        An SQLite file path, given by whoever builds the jobs (``matfunnel run`` passes
        ``<run>/cache.sqlite`` to every maker). When ``None``, the user's configuration
        ``MATFUNNEL_RESULT_CACHE`` applies (a path or a MongoDB URI, e.g. exported on FireWorks
        workers, so that a password never enters a job); unset: no cache.
    """
    location = str(location) if location else os.environ.get(ENV)
    if not location:
        return None
    if location not in _open:
        _open[location] = open_cache(location)
    return _open[location]
