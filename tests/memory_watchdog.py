"""A resident-memory cap for the test process: a regression that allocates without bound fails, the machine lives.

An address-space limit (``RLIMIT_AS``) does not work for this suite: torch, warp and the shared libraries map far
more address space than they use, so a limit low enough to matter makes libraries fail to load. This watchdog
measures what is really used (resident pages, ``/proc/self/statm``) from a thread:

- above ``cap`` it interrupts the main thread with ``MemoryError`` (through ``SIGUSR1``; Python runs the handler
  at the next bytecode, so the test that allocates fails with a message naming the cap);
- above ``hard_factor * cap`` (one C call that keeps allocating never returns to Python) it kills the process:
  the suite fails, the machine keeps its memory.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time


class MemoryCapExceeded(MemoryError):
    """The test process went over the suite's resident-memory cap."""


class MemoryWatchdog:
    """Watch this process's resident memory; see the module docstring (``MemoryWatchdog.active``: the running one)."""

    active: MemoryWatchdog | None = None

    def __init__(self, cap_bytes: int, hard_factor: float = 1.5, interval: float = 0.02):
        self.cap = int(cap_bytes)
        self.hard_factor = hard_factor
        self.interval = interval
        self.peak = 0
        self._fired = False
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._main = threading.main_thread().ident
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        """Resident bytes of this process now."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _on_signal(self, signum, frame):  # noqa: ARG002 - signal handler signature
        raise MemoryCapExceeded(f"test process went over the suite's memory cap of {self.cap / 2**30:.1f} GB "
                                f"(resident {self.rss() / 2**30:.1f} GB)")

    def _watch(self) -> None:
        while True:
            rss = self.rss()
            self.peak = max(self.peak, rss)
            if rss > self.hard_factor * self.cap:
                sys.stderr.write(f"\nmemory watchdog: resident {rss / 2**30:.1f} GB is over "
                                 f"{self.hard_factor} x the {self.cap / 2**30:.1f} GB cap; killing the test "
                                 f"process\n")
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if rss > self.cap and not self._fired:
                self._fired = True
                if self._main is not None:
                    signal.pthread_kill(self._main, signal.SIGUSR1)
            elif rss < 0.9 * self.cap:
                self._fired = False
            time.sleep(self.interval)

    def start(self) -> MemoryWatchdog:
        """Install the signal handler and start the watching thread (daemon); returns ``self``."""
        signal.signal(signal.SIGUSR1, self._on_signal)
        self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)
        self._thread.start()
        MemoryWatchdog.active = self
        return self
