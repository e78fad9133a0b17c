"""Broker faults: an outage, a frozen broker, nobody subscribed (issue #15 items 9 and 10, held scenarios).

The held scenarios run short in CI (a few seconds of outage) and at the README's lengths with INSPECTD_FAULTS=full
(a 60 s outage at 4 fps, a broker frozen with SIGSTOP for 20 s).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.daemon import run_daemon
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, write_config, write_frames
from tests.faults.conftest import record_seqs, scale, tally

pytestmark = pytest.mark.timeout(150)


def stream_config(tmp_path: Path, broker: Broker, bundle: Any, fps: float, **extra: Any) -> Path:
    """A daemon on a looping folder paced at `fps`, fast reconnects, short keepalive."""
    frames = tmp_path / "frames"
    write_frames(frames, 10)
    mqtt = {"keepalive_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.25} | extra.pop("mqtt", {})
    return write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": fps}, mqtt=mqtt, **extra)


def run_in_thread(config: Any, tmp_path: Path, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """run_daemon on a thread; the outcome dict fills in when it returns."""
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(run_daemon(config, base_dir=tmp_path, **kwargs)))
    thread.start()
    return thread, outcome


def finish(thread: threading.Thread, outcome: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Join the daemon thread; a hang fails here, not as a KeyError later."""
    thread.join(timeout)
    assert not thread.is_alive(), "run_daemon did not return"
    assert "exit_code" in outcome, "run_daemon raised (see the log above)"
    return outcome


class TestHeldBrokerFaults:
    """An outage and a frozen broker lose nothing (held; regression tests)."""

    def test_outage_loses_nothing_and_is_logged_once(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                     daemons: Any, tmp_path: Path) -> None:
        """Broker down mid-stream, then a second short outage: every seq arrives, in order, and each outage logs.

        Each outage logs one error (`mqtt_connect_failed` with the cause), warnings after that, never paho's
        repeated errors.
        """
        fps = scale(10.0, 4.0)
        outage = scale(6.0, 60.0)
        results = mqtt_collector(f"{PREFIX}/result")
        daemon = daemons(stream_config(tmp_path, broker, bundle, fps))
        assert results.wait_for(10, 20), daemon.text()[-3000:]
        broker.stop()
        time.sleep(outage)
        broker.start()
        n = len(results.messages)
        assert results.wait_for(n + 10, 30)
        broker.stop()
        time.sleep(1.5)
        broker.start()
        n = len(results.messages)
        assert results.wait_for(n + 10, 30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        stopped = daemon.events("daemon_stopped")[-1]
        assert results.wait_until(lambda m: {json.loads(p)["seq"] for _, p, _ in m} >= set(range(stopped["published"])),
                                  20)
        seen = tally(results.json())
        record_seqs(f"broker down {outage:g} s at {fps:g} fps, then 1.5 s more", stopped["published"], seen)
        assert (seen.gaps, seen.different_duplicates, seen.in_order) == ([], [], True)
        assert seen.unique == stopped["published"] >= outage * fps
        errors = [e for e in daemon.events() if e.get("level") in {"error", "critical"}]
        assert [e["event"] for e in errors] == ["mqtt_connect_failed"] * 2, errors
        assert all("refused" in e["error"].lower() for e in errors)
        assert daemon.events("mqtt_still_disconnected"), "no periodic summary during a long outage"

    def test_frozen_broker_loses_nothing(self, bundle: Any, broker: Broker, mqtt_collector: Any, daemons: Any,
                                         tmp_path: Path) -> None:
        """Broker frozen with SIGSTOP (TCP up, nothing answers), then resumed: every seq arrives, in order."""
        results = mqtt_collector(f"{PREFIX}/result")
        daemon = daemons(stream_config(tmp_path, broker, bundle, 10.0))
        assert results.wait_for(10, 20)
        broker._proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        time.sleep(scale(8.0, 20.0))
        broker._proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        n = len(results.messages)
        assert results.wait_for(n + 10, 40)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        published = daemon.events("daemon_stopped")[-1]["published"]
        assert results.wait_until(lambda m: {json.loads(p)["seq"] for _, p, _ in m} >= set(range(published)), 20)
        seen = tally(results.json())
        record_seqs(f"broker frozen (SIGSTOP) {scale(8.0, 20.0):g} s at 10 fps", published, seen)
        assert (seen.gaps, seen.different_duplicates, seen.in_order) == ([], [], True)


class TestNoSubscribers:
    """Item 9: "acknowledged by the broker" is the daemon's guarantee; nobody listening is said and counted."""

    def test_no_subscribers_is_logged_and_counted(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                  daemons: Any, tmp_path: Path) -> None:
        """MQTT 5 PUBACK reason 0x10 for every verdict: a rate-limited `no_subscribers` warning and a count."""
        stats = mqtt_collector(f"{PREFIX}/stats")
        frames = tmp_path / "frames"
        write_frames(frames, 20)
        daemon = daemons(write_config(tmp_path, broker, bundle, frames, source={"fps": 20}))
        assert daemon.wait(30) == 0, daemon.text()[-3000:]
        warned = daemon.events("no_subscribers")
        assert 1 <= len(warned) <= 3 and warned[0]["level"] == "warning"
        assert stats.wait_until(lambda m: any(json.loads(p)["mqtt"]["no_subscribers"] == 20 for _, p, _ in m), 5)

    def test_require_subscriber_keeps_and_resends(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                  tmp_path: Path) -> None:
        """mqtt.require_subscriber = true: verdicts nobody received stay spooled and reach a later subscriber.

        The subscriber is a clean-session MQTT 5 client that comes 2 s late, as in the issue; all arrive in order.
        """
        frames = tmp_path / "frames"
        write_frames(frames, 20)
        path = write_config(tmp_path, broker, bundle, frames, mqtt={"require_subscriber": True},
                            pipeline={"shutdown_timeout_s": 30.0})
        thread, outcome = run_in_thread(load_config(path, base_dir=tmp_path), tmp_path, max_frames=20)
        time.sleep(2.0)  # the subscriber comes back late: everything was judged and refused meanwhile
        results = mqtt_collector(f"{PREFIX}/result", v5=True)
        assert results.wait_for(20, 30)
        assert finish(thread, outcome)["exit_code"] == 0
        seen = tally(results.json())
        record_seqs("mqtt.require_subscriber = true, clean-session subscriber 2 s late", 20, seen,
                    note="without require_subscriber these 20 are acknowledged by the broker and dropped (0x10)")
        assert (seen.unique, seen.gaps, seen.in_order) == (20, [], True)
