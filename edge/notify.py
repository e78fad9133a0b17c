"""systemd readiness, status and watchdog (sd_notify), without libsystemd.

The protocol is one datagram of `KEY=value` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading `@`
means the Linux abstract namespace). Outside systemd the variable is unset and every call is a no-op, so the daemon
code calls the notifier unconditionally. A failed send is logged, never raised: a broken notify socket must not
stop a production line (systemd will notice the missing pings itself).

The watchdog pings come from `start_watchdog`, which sends `WATCHDOG=1` only while every pipeline stage has beaten
recently (`PipelineStats.last_beats()`); a hung stage stops the pings and systemd restarts the service, sending
SIGABRT first, which `faulthandler` turns into a stack dump of every thread in the journal.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from edge.log import get_logger

if TYPE_CHECKING:
    from edge.stats import PipelineStats

log = get_logger(__name__)

# Period of STATUS= updates when systemd asked for no watchdog (the status line is still useful in `systemctl status`).
STATUS_PERIOD_S = 5.0


def enable_faulthandler() -> None:
    """Dump every thread's stack to stderr on SIGABRT/SIGSEGV (systemd's watchdog kill is SIGABRT).

    Idempotent; call it once at daemon start. stderr goes to the journal under systemd.
    """
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)


class Notifier:
    """Sends sd_notify messages to `$NOTIFY_SOCKET`; every method is a no-op when the variable is unset.

    Args:
        environ: Where to read NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID (default: `os.environ`); tests pass
            their own.
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if raw.startswith("@"):
            self._address = b"\0" + raw[1:].encode()  # abstract namespace
        elif raw.startswith("/"):
            self._address = raw
        elif raw:
            log.warning("notify_socket_unsupported", notify_socket=raw, expected="an absolute path or @abstract name")
        self._watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False  # log the first failure loudly, later ones at debug level

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured (running under systemd with Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises; None when no watchdog."""
        return self._watchdog_s

    def ready(self) -> None:
        """Tell systemd start-up is done (bundle loaded, source opened); `systemctl start` returns now."""
        self.send("READY=1")

    def status(self, text: str) -> None:
        """Set the one-line status shown by `systemctl status`."""
        self.send("STATUS=" + text.replace("\n", " "))

    def watchdog(self) -> None:
        """Keep-alive ping; systemd restarts the service if none comes within WatchdogSec."""
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd shutdown has begun (draining, flushing the spool)."""
        self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more start-up (or shutdown) time, e.g. while a TensorRT engine is being built."""
        self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def send(self, *lines: str) -> bool:
        """Send one datagram of `lines`; True when sent, False when disabled or the send failed (logged)."""
        if self._address is None:
            return False
        data = "\n".join(lines).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, self._address)
            except OSError as exc:
                event = "notify_send_failed"
                fields: dict[str, Any] = {"message": lines[0], "error": str(exc), "socket": repr(self._address)}
                if self._failed:
                    log.debug(event, **fields)
                else:
                    log.warning(event, **fields)
                self._failed = True
                return False
        return True

    def close(self) -> None:
        """Close the socket (later sends reopen it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _watchdog_interval(env: Any) -> float | None:
    """Half of WATCHDOG_USEC, or None if unset, invalid, zero, or meant for another process (WATCHDOG_PID)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("watchdog_usec_invalid", watchdog_usec=usec, expected="a positive integer")
        return None
    return value / 2_000_000 if value > 0 else None


def status_line(snapshot: dict[str, Any]) -> str:
    """The STATUS= text: fps, counts and the last verdict, short enough for `systemctl status`."""
    verdicts = snapshot.get("verdicts") or {}
    parts = [f"fps={float(snapshot.get('fps') or 0.0):.1f}"]
    parts.append(f"frames={snapshot.get('frames_captured', 0)}")
    parts.append("pass={} fail={} error={}".format(*(verdicts.get(k, 0) for k in ("pass", "fail", "error"))))
    last = snapshot.get("last_verdict")
    if isinstance(last, dict):
        last = f"{last.get('verdict', last.get('kind', '?'))}#{last.get('seq', '?')}"
    parts.append(f"last={last or '-'}")
    if "broker_connected" in snapshot:
        parts.append("broker=" + ("up" if snapshot["broker_connected"] else "down"))
    return " ".join(parts)


def stale_stages(beats: dict[str, float], now: float, max_age_s: float) -> list[str]:
    """Names of the stages whose last beat is older than `max_age_s` (monotonic seconds)."""
    return sorted(name for name, t in beats.items() if now - t > max_age_s)


def start_watchdog(
    notifier: Notifier,
    stats: PipelineStats,
    stop: threading.Event,
    *,
    interval_s: float | None = None,
    max_age_s: float | None = None,
) -> threading.Thread | None:
    """Start a daemon thread that pings WATCHDOG=1 while every stage beats, and updates STATUS= with fps.

    A stage counts as alive when its last beat is younger than `max_age_s` (default: the ping interval, i.e. half
    of WatchdogSec, so systemd's kill comes at most one WatchdogSec after a stage hangs). Before any stage has beaten,
    the start of this thread stands in for the beat, so a pipeline that never starts is caught too. Also enables
    faulthandler, so the SIGABRT of a watchdog kill dumps stacks.

    Args:
        notifier: Where to send; nothing is started when it is disabled (not under systemd).
        stats: The pipeline's stats (`last_beats()`, `snapshot()`).
        stop: Set by the daemon on shutdown; the thread exits within one interval.
        interval_s: Override of the ping period (tests); default `notifier.watchdog_interval_s`.
        max_age_s: Override of the staleness limit (tests).

    Returns:
        The started thread, or None when there is no notify socket.
    """
    enable_faulthandler()
    if not notifier.enabled:
        return None
    wd = notifier.watchdog_interval_s
    period = interval_s or wd or STATUS_PERIOD_S
    limit = max_age_s or period
    pinging = wd is not None or interval_s is not None

    def loop() -> None:
        started = time.monotonic()
        reported: list[str] = []
        while not stop.is_set():
            now = time.monotonic()
            try:
                beats = dict(stats.last_beats())
                stale = stale_stages(beats, now, limit) if beats else ([] if now - started <= limit else ["all"])
                snapshot = stats.snapshot()
            except Exception:  # a stats bug must not kill the watchdog silently: stop pinging, say why
                log.exception("watchdog_stats_failed")
                stale, snapshot = ["stats"], {}
            if stale != reported:
                if stale:
                    log.error("watchdog_withheld", stale_stages=stale, max_age_s=limit)
                else:
                    log.info("watchdog_resumed")
                reported = stale
            status = status_line(snapshot) if snapshot else "stats unavailable"
            if stale:
                notifier.send(f"STATUS=stalled: {','.join(stale)}; {status}")
            elif pinging:
                notifier.send("WATCHDOG=1", f"STATUS={status}")
            else:
                notifier.status(status)
            stop.wait(period)

    thread = threading.Thread(target=loop, name="watchdog", daemon=True)
    thread.start()
    return thread
