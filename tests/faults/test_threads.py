"""Faults inside the daemon's own threads (issue #15 item 1): a dead thread or a raising callback stops the daemon.

None may die, and no paho callback may raise, without the daemon stopping by itself with exit code 1 (so systemd
restarts it and the broker publishes the Will).

The faults are injected by replacing one method with a raising one: what is under test is the supervision around it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge.config import load_config
from edge.daemon import run_daemon
from edge.mqtt.results import MqttSink
from edge.pipeline import Pipeline
from tests.conftest import Broker
from tests.edge.test_daemon import write_config, write_frames
from tests.faults.conftest import Plc

pytestmark = pytest.mark.timeout(90)


class TestDaemonFailsLoudly:
    """Faults inside the daemon's own threads end the run with exit code 1, by themselves."""

    def run(self, broker: Broker, bundle: Any, tmp_path: Path, **extra: Any) -> tuple[dict[str, Any], list[Any]]:
        frames = tmp_path / "frames"
        write_frames(frames, 5)
        extra.setdefault("pipeline", {}).setdefault("shutdown_timeout_s", 2.0)  # a dead forwarder delivers nothing
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": 20}, **extra)
        outcome: dict[str, Any] = {}
        with capture_logs() as logs:
            thread = threading.Thread(target=lambda: outcome.update(run_daemon(load_config(path), base_dir=tmp_path)))
            thread.start()
            thread.join(60)
        assert not thread.is_alive(), "a daemon with a dead thread kept running (a zombie)"
        return outcome, logs

    def test_dead_forwarder(self, bundle: Any, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The spool forwarder dies: `thread_died`, the daemon stops by itself, exit code 1."""
        def broken(self: MqttSink, rid: int, seq: int, reason: Any) -> None:
            msg = "the forwarder's bug"
            raise RuntimeError(msg)

        monkeypatch.setattr(MqttSink, "_retire", broken)
        outcome, logs = self.run(broker, bundle, tmp_path)
        assert outcome["exit_code"] == 1
        assert any(e["event"] == "thread_died" and e["thread"] == "mqtt-forward" for e in logs)

    def test_exception_in_a_paho_callback(self, bundle: Any, broker: Broker, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, plc: Plc) -> None:
        """The pipeline's trigger callback raises on paho's thread: reported, the daemon stops, exit code 1."""
        def broken(self: Pipeline, trigger: Any) -> None:
            msg = "trigger handling bug"
            raise ValueError(msg)

        monkeypatch.setattr(Pipeline, "trigger", broken)
        done = threading.Event()

        def trigger_when_online() -> None:
            while not done.is_set():
                plc.trigger("P1")
                done.wait(0.2)

        sender = threading.Thread(target=trigger_when_online)
        sender.start()
        try:
            outcome, logs = self.run(broker, bundle, tmp_path, pipeline={"mode": "triggered"})
        finally:
            done.set()
            sender.join(10)
        assert outcome["exit_code"] == 1
        assert any(e["event"] == "callback_failed" and "on-message" in e["thread"] for e in logs)
