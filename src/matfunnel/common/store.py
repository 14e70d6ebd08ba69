"""The embedded, persistent job store: maggma ``MontyStore`` on SQLite under the run folder.

``embedded_store(run_dir)`` is what ``matfunnel run`` uses when no MongoDB is configured. Several
processes (parallel local workers, a notebook reading results while a campaign runs) may open
the same store at once, which plain ``MontyStore`` does not survive:

* maggma's ``MontyStore.connect`` calls ``montydb.set_storage`` on *every* connect, which
  truncates and rewrites the repository's ``.monty.storage`` / ``monty.storage.cfg``; a process
  connecting at that moment reads an empty storage name (``ValueError: Empty module name``);
* montydb creates a collection's SQLite file lazily, *then* its table: a second writer sees the
  file and inserts into a table that does not exist yet (``no such table: documents``);
* the storage config maggma writes has no ``journal_mode``, so SQLite runs with a rollback
  journal (readers block writers) and python's 5 s busy timeout.

Here the repository and all collections are created once, under an exclusive file lock, with
``journal_mode=WAL``; connecting never rewrites the config; writes wait up to
``BUSY_TIMEOUT_MS`` for the lock and are retried (they are upserts, so a retry is harmless) if
SQLite still reports the database busy. ``tests/test_store.py`` runs 8 concurrent writers.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from pathlib import Path

from jobflow import JobStore
from maggma.stores import MontyStore

DATABASE = "matfunnel"
# "data": what ``@job(data=...)`` writes (jobflow's name); "trajectories": ``@job(trajectories=...)``
COLLECTIONS = ("outputs", "data", "trajectories")
ADDITIONAL_STORES = ("data", "trajectories")
BUSY_TIMEOUT_MS = 120_000
WRITE_RETRIES = 8
STORAGE_KWARGS = {"use_bson": True, "mongo_version": "4.0", "journal_mode": "WAL"}
_IDENT_FILE = ".monty.storage"
_CONFIG_FILE = "monty.storage.cfg"
_LOCK_FILE = ".matfunnel-store.lock"


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive inter-process lock on ``path/.matfunnel-store.lock`` (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: single-process use only
        yield
        return
    fd = os.open(path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StoreError(ValueError):
    """The embedded store of a run folder is damaged; the message names the file and what to do."""


def check_store(path: str | Path) -> None:
    """Check every collection file of the embedded store at ``path`` (quick, read-only).

    Raises
    ------
    StoreError
        Naming the first damaged file (not an SQLite database, failed integrity check, no ``documents``
        table) and what to do about it.
    """
    path = Path(path)
    for file in sorted((path / DATABASE).glob("*.collection")):
        problem = _collection_problem(file)
        if problem is not None:
            raise StoreError(
                f"the job store file {file} is corrupt ({problem}); the results it held cannot be read. Move the "
                f"folder {path} aside and run again (finished relaxations and DFT runs are reused from the "
                f"run's cache.sqlite), or use another run folder")


def _collection_problem(file: Path) -> str | None:
    if file.stat().st_size == 0:
        return None  # created, never written: montydb makes its table on first use
    try:
        con = sqlite3.connect(f"file:{file}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        status = con.execute("PRAGMA quick_check").fetchone()
        if not status or status[0] != "ok":
            return f"integrity check: {status[0] if status else 'no answer'}"[:200]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "documents" not in tables:
            return "no documents table"
    except sqlite3.Error as exc:
        # busy (another process is writing it) is not damage
        return None if "locked" in str(exc) or "busy" in str(exc) else str(exc)
    finally:
        con.close()
    return None


def _configured(path: Path) -> bool:
    ident, cfg = path / _IDENT_FILE, path / _CONFIG_FILE
    return (ident.is_file() and ident.read_text().strip() == "sqlite" and cfg.is_file()
            and "journal_mode" in cfg.read_text())


def init_repository(path: str | Path, collections=COLLECTIONS) -> Path:
    """Create the montydb repository at ``path`` with its collections, once (idempotent, locked)."""
    from montydb import MontyClient, set_storage

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if not _configured(path):
            set_storage(str(path), storage="sqlite", **STORAGE_KWARGS)
        client = MontyClient(str(path))
        try:
            db = client[DATABASE]
            existing = set(db.list_collection_names())
            for name in collections:
                if name not in existing:
                    db.create_collection(name)
        finally:
            client.close()
    return path


def _is_busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


class EmbeddedMontyStore(MontyStore):
    """``MontyStore`` that is safe to open and write from several processes at once."""

    def __init__(self, collection_name: str, database_path: str, **kwargs):
        kwargs.setdefault("database_name", DATABASE)
        kwargs.setdefault("storage", "sqlite")
        kwargs.setdefault("storage_kwargs", dict(STORAGE_KWARGS))
        kwargs.setdefault("client_kwargs", {"busy_timeout": BUSY_TIMEOUT_MS})
        super().__init__(collection_name, database_path=database_path, **kwargs)

    def connect(self, force_reset: bool = False):
        """Open the collection, creating the repository and its collections first when it is new."""
        if not self._coll or force_reset:
            from montydb import MontyClient

            if not _configured(Path(self.database_path)):
                init_repository(self.database_path, collections=(self.collection_name,))
            client = MontyClient(self.database_path, **self.client_kwargs)
            self._coll = client[self.database_name][self.collection_name]

    def _retry(self, func, *args, **kwargs):
        for attempt in range(WRITE_RETRIES):
            try:
                return func(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == WRITE_RETRIES - 1:
                    raise
                time.sleep(min(5.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        return None  # pragma: no cover

    def update(self, docs, key=None):
        """Insert or update ``docs``, retried while SQLite reports the database busy."""
        return self._retry(super().update, docs, key=key)

    def remove_docs(self, criteria):
        """Remove the documents matching ``criteria``, retried while SQLite reports the database busy."""
        return self._retry(super().remove_docs, criteria)


def embedded_store(run_dir: str | Path) -> JobStore:
    """A ``JobStore`` persisted in ``run_dir/store`` (created with its collections up front).

    Docs go to ``outputs`` (key ``uuid``); large data to the additional stores ``data`` and
    ``trajectories`` (key ``blob_uuid``). Safe for concurrent processes on one machine (a local
    file system: SQLite locking is not reliable on NFS -- use MongoDB there, see workflows/).
    A damaged store file raises :class:`StoreError` (see :func:`check_store`).
    """
    check_store(Path(run_dir) / "store")
    path = init_repository(Path(run_dir) / "store")

    def make(name: str) -> EmbeddedMontyStore:
        return EmbeddedMontyStore(name, str(path), key="uuid" if name == "outputs" else "blob_uuid")

    store = JobStore(make("outputs"), additional_stores={name: make(name) for name in ADDITIONAL_STORES})
    store.connect()
    return store
