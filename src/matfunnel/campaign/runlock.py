"""One campaign run per run folder at a time: an exclusive lock on ``<run folder>/.lock``.

Two ``matfunnel run`` commands on one folder would run the same relaxations and DFT calculations twice
and write one store and one report over the other. :class:`RunLock` takes ``fcntl.flock`` on
``<run folder>/.lock`` (released by the kernel when its process ends, however it ends) and writes the
holder's pid, host and start time into it, so a second run is refused with who holds the folder. A lock
file left by a process that died is not held: the next run takes it over (and says so in the log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderError(ValueError):
    """A run folder cannot be used for this run (in use, another campaign's, not writable)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def read_holder(run_dir: str | Path) -> dict:
    """What the lock file of ``run_dir`` says about its last holder (``pid``, ``host``, ``since``); {} if unreadable."""
    try:
        info = json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


class RunLock:
    """Exclusive lock of a run folder for the lifetime of one run (a context manager).

    Parameters
    ----------
    run_dir
        The run folder (it must exist).

    Raises
    ------
    RunFolderError
        On :meth:`acquire` when another process holds the folder; the message names the folder, the
        holder's pid and host and since when.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock (never waits); record this process as the holder."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFolderError(f"run folder {self.run_dir}: cannot create its lock file {self.path}: "
                                 f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(self._in_use_message()) from None
        except OSError as exc:  # a file system without flock: say so rather than run unprotected
            os.close(fd)
            raise RunFolderError(f"run folder {self.run_dir}: cannot lock {self.path}: {exc.strerror or exc}") from exc
        old = read_holder(self.run_dir)
        if old.get("pid") and old.get("host") == socket.gethostname() and not _pid_alive(int(old["pid"])):
            log.warning("run folder %s: taking over the lock of pid %s (started %s), which is no longer running",
                        self.run_dir, old.get("pid"), old.get("since", "?"))
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def _in_use_message(self) -> str:
        h = read_holder(self.run_dir)
        who = f"pid {h.get('pid', '?')}" + (f" on {h['host']}" if h.get("host") else "")
        return (f"run folder {self.run_dir} is in use by {who} since {h.get('since', '?')}; wait for that run "
                f"to finish or use another --run-dir")

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        """Acquire the lock."""
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Release the lock, also when the run raised."""
        self.release()
