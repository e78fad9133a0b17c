"""The supervisor: a dying thread, a raising callback and a silent loop each fail the daemon, loudly."""

from __future__ import annotations

import threading
import time

from structlog.testing import capture_logs

from edge.stats import PipelineStats
from edge.supervise import Supervisor, guarded


class TestSupervisor:
    """The supervisor on its own."""

    def test_a_dying_thread_is_logged_with_its_traceback_and_fails(self) -> None:
        """An uncaught exception in any thread: `thread_died` (critical, with the traceback), `failed` set."""
        supervisor = Supervisor()

        def boom() -> None:
            msg = "disk on fire"
            raise OSError(msg)

        with capture_logs() as logs, supervisor.installed():
            thread = threading.Thread(target=boom, name="spool-writer")
            thread.start()
            thread.join(10)
        died = [e for e in logs if e["event"] == "thread_died"]
        assert died and died[0]["log_level"] == "critical" and died[0]["thread"] == "spool-writer"
        assert died[0]["exc_info"][1].args == ("disk on fire",)
        assert supervisor.failed and "disk on fire" in (supervisor.failure or "")
        assert threading.excepthook is not supervisor._excepthook  # restored after the block

    def test_guarded_swallows_and_reports(self) -> None:
        """A callback's exception does not escape `guarded` (paho's thread lives on) but fails the daemon."""
        supervisor = Supervisor()
        with guarded(supervisor, "mqtt-on-message"):
            msg = "maximum recursion depth exceeded"
            raise RecursionError(msg)
        assert supervisor.failed and "mqtt-on-message" in (supervisor.failure or "")

    def test_a_silent_loop_is_stuck(self) -> None:
        """A loop that stopped beating for STUCK_S fails the daemon (`thread_stuck`, every stack logged)."""
        stats = PipelineStats()
        supervisor = Supervisor()
        stats.beat("capture")
        stats.beat("mqtt-forward", at=time.monotonic() - 120.0)
        with capture_logs() as logs:
            supervisor.check_stuck(stats)
        stuck = [e for e in logs if e["event"] == "thread_stuck"]
        assert stuck and stuck[0]["threads"] == ["mqtt-forward"] and "MainThread" in stuck[0]["stacks"]
        assert supervisor.failed
