"""A resident-memory cap per test: a regression that allocates without bound fails, the machine lives.

An address-space limit (``RLIMIT_AS``) does not work for this suite: torch, warp and the shared libraries map far
more address space than they use, so a limit low enough to matter makes libraries fail to load. This watchdog
measures what is really used (resident pages, ``/proc/self/statm``) from a thread.

The cap is on what one test adds: before each test the suite hands freed memory back (``malloc_trim``)
and sets ``cap = resident now + the test's allowance`` (``start_test``), so memory that earlier tests left to the
allocator does not fail a later one.

- above ``cap`` it interrupts the main thread with ``MemoryError`` (through ``SIGUSR1``; Python runs the handler
  at the next bytecode, so the test that allocates fails with a message naming the allowance);
- above ``hard_limit`` (a share of the machine's memory: one C call that keeps allocating never returns to
  Python) it kills the process: the suite fails, the machine keeps its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading
import time


class MemoryCapExceeded(MemoryError):
    """A test went over its resident-memory allowance."""


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def release_freed_memory() -> None:
    """Collect young garbage and hand the allocator's free pages back to the system (glibc ``malloc_trim``).

    A full collection takes ~130 ms in the suite's process (540 tests: over a minute), the young generations
    ~0.1 ms; what a finished test held is freed by reference counting anyway.
    """
    gc.collect(1)
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryWatchdog:
    """Watch this process's resident memory; see the module docstring (``MemoryWatchdog.active``: the running one)."""

    active: MemoryWatchdog | None = None

    def __init__(self, allowance_bytes: int, hard_limit_bytes: int, interval: float = 0.02):
        self.allowance = int(allowance_bytes)
        self.hard_limit = int(hard_limit_bytes)
        self.interval = interval
        self.base = self.rss()
        self.cap = self.base + self.allowance
        self.peak = 0
        self._fired = False
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._main = threading.main_thread().ident
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        """Resident bytes of this process now."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start_test(self, allowance_bytes: int | None = None) -> None:
        """A test starts: free what can be freed, then allow it ``allowance_bytes`` (default: the suite's) more."""
        release_freed_memory()
        self.base = self.rss()
        self.cap = self.base + int(self.allowance if allowance_bytes is None else allowance_bytes)
        self._fired = False

    def _on_signal(self, signum, frame):  # noqa: ARG002 - signal handler signature
        raise MemoryCapExceeded(
            f"the test went over its memory cap: resident {self.rss() / 2**30:.1f} GB, "
            f"{(self.rss() - self.base) / 2**30:.1f} GB more than at its start "
            f"(allowed {(self.cap - self.base) / 2**30:.1f} GB; a test that needs more says so with "
            f"@pytest.mark.memory_gb(N))")

    def _watch(self) -> None:
        while True:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if rss > self.hard_limit:
                sys.stderr.write(f"\nmemory watchdog: resident {rss / 2**30:.1f} GB is over the hard limit of "
                                 f"{self.hard_limit / 2**30:.1f} GB; killing the test process\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if rss > self.cap and not self._fired:
                self._fired = True
                if self._main is not None:
                    signal.pthread_kill(self._main, signal.SIGUSR1)
            time.sleep(self.interval)

    def start(self) -> MemoryWatchdog:
        """Install the signal handler and start the watching thread (daemon); returns ``self``."""
        signal.signal(signal.SIGUSR1, self._on_signal)
        self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)
        self._thread.start()
        MemoryWatchdog.active = self
        return self
