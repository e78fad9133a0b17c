"""Supervision of the daemon's own threads: none may die or hang without the process failing.

The pipeline stages are not the only threads that keep the promise "every verdict delivered or kept": the MQTT
connection, paho's network thread, the spool forwarder, the trigger input and the debug encoder matter as much. A
thread that dies silently leaves a zombie that looks alive (a Last Will never sent, exit code 0). So:

- every uncaught exception in any thread (ours and paho's) reaches `threading.excepthook`, which the supervisor
  installs for the daemon's lifetime: it logs `thread_died` with the traceback and marks the daemon failed;
- callbacks that run on a foreign thread (paho's) catch everything themselves and report it with `fail()`;
- threads that loop beat `PipelineStats.beat(name)`; the watchdog withholds systemd's ping when one is stale, and
  `check_stuck()` fails the daemon (with every thread's stack in the log) when one is stale for `STUCK_S`.

The daemon's main loop watches `failed` and then shuts down with exit code 1, so systemd restarts the service and
the broker publishes the Will.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING

from edge.log import get_logger

if TYPE_CHECKING:
    from edge.stats import PipelineStats

log = get_logger(__name__)
STUCK_S = 60.0  # a loop that has not beaten for this long is hung (every loop beats at least every few seconds)


class Supervisor:
    """Collects the first failure of any thread or callback and wakes whoever waits on `failed_event`."""

    def __init__(self) -> None:
        self.failed_event = threading.Event()
        self.failure: str | None = None  # "<thread>: <exception>", the first one
        self._lock = threading.Lock()

    @property
    def failed(self) -> bool:
        """Whether a thread died, hung or reported a fatal error."""
        return self.failed_event.is_set()

    def fail(self, where: str, exc: BaseException | None = None, *, event: str = "thread_died") -> None:
        """Record a fatal failure in `where` (logged with the traceback of `exc`); the first one is kept."""
        with self._lock:
            if self.failure is None:
                self.failure = f"{where}: {type(exc).__name__}: {exc}" if exc is not None else where
        if exc is not None:
            log.critical(event, thread=where, error=f"{type(exc).__name__}: {exc}",
                         exc_info=(type(exc), exc, exc.__traceback__), action="stopping; exit code 1")
        else:
            log.critical(event, thread=where, action="stopping; exit code 1")
        self.failed_event.set()

    def _excepthook(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit or args.exc_value is None:
            return
        name = args.thread.name if args.thread is not None else "?"
        self.fail(name, args.exc_value)

    @contextmanager
    def installed(self) -> Iterator[Supervisor]:
        """Route every thread's uncaught exception here while the block runs (restored afterwards)."""
        previous = threading.excepthook
        threading.excepthook = self._excepthook
        try:
            yield self
        finally:
            threading.excepthook = previous

    def check_stuck(self, stats: PipelineStats, now: float | None = None, limit_s: float = STUCK_S) -> None:
        """Fail the daemon when a beating loop has been silent for `limit_s`, logging every thread's stack."""
        now = time.monotonic() if now is None else now
        stale = sorted(name for name, t in stats.last_beats().items() if now - t > limit_s)
        if stale and not self.failed:
            log.critical("thread_stuck", threads=stale, silent_for_s=limit_s, stacks=_stacks(),
                         action="stopping; exit code 1")
            self.fail(",".join(stale), event="thread_stuck")


def guarded(supervisor: Supervisor | None, where: str) -> _Guard:
    """A context manager: an exception in its block is reported to `supervisor` as a failure of `where`, not raised.

    For callbacks on a foreign thread (paho's), which must never die of our exception.
    """
    return _Guard(supervisor, where)


class _Guard:
    """Context manager behind `guarded`: swallows and reports, so a foreign thread (paho's) never dies of it."""

    def __init__(self, supervisor: Supervisor | None, where: str) -> None:
        self.supervisor = supervisor
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        if self.supervisor is not None:
            self.supervisor.fail(self.where, exc, event="callback_failed")
        else:
            log.critical("callback_failed", thread=self.where, exc_info=(exc_type, exc, tb))
        return True


def _stacks() -> dict[str, str]:
    """Every thread's current stack, by name (for `thread_stuck`)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return {names.get(ident, str(ident)): "".join(traceback.format_stack(frame))
            for ident, frame in sys._current_frames().items()}  # the documented way to get them
