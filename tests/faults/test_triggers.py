"""Triggered mode under faults: hostile payloads, kills and stops with triggers queued, triggers sent while away.

The promise under test: every trigger the broker accepted for the daemon gets exactly one verdict carrying its
part_id, delivered or kept in the spool; a trigger that could not be judged on a frame taken after it arrived (the
daemon was away, restarted, or too late) gets an `error` verdict, never the frame of a later part.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, write_config, write_frames
from tests.faults.conftest import Plc, record, tally

pytestmark = pytest.mark.timeout(90)


def triggered_config(tmp_path: Path, broker: Broker, bundle: Any, *, fps: float = 0.0, **extra: Any) -> Path:
    """A triggered-mode config on a looping folder (a camera at `fps`; 0 = a frame whenever asked)."""
    frames = tmp_path / "frames"
    write_frames(frames, 6)
    pipeline = {"mode": "triggered", "trigger_timeout_s": 2.0, "shutdown_timeout_s": 5.0} | extra.pop("pipeline", {})
    return write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": fps}, pipeline=pipeline,
                        **extra)


def wait_online(status: Any, after: int = 0, timeout: float = 20.0) -> None:
    """Wait for an "online" on <prefix>/status among the messages from index `after` on."""
    assert status.wait_until(lambda m: b"online" in [p for _, p, _ in m[after:]], timeout), status.payloads()


class Line:
    """The PLC's view: verdicts and status from independent subscribers, and daemons started until "online"."""

    def __init__(self, collect: Any, daemons: Any) -> None:
        self.results = collect(f"{PREFIX}/result")
        self.status = collect(f"{PREFIX}/status")
        self._daemons = daemons

    def start(self, config: Path) -> Any:
        """A daemon on `config`, once it said "online" (subscribed: ready for triggers)."""
        seen = len(self.status.messages)
        daemon = self._daemons(config)
        wait_online(self.status, after=seen)
        return daemon


@pytest.fixture
def line(mqtt_collector: Any, daemons: Any) -> Line:
    """Subscribers on <prefix>/result and <prefix>/status, and a way to start daemons."""
    return Line(mqtt_collector, daemons)


def part_verdicts(results: Any) -> dict[str, list[dict[str, Any]]]:
    """part_id -> its verdicts (first deliveries only: re-deliveries of one seq are the same verdict)."""
    seen: dict[int, dict[str, Any]] = {}
    for r in results.json():
        seen.setdefault(r["seq"], r)
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(seen.values(), key=lambda r: r["seq"]):
        out.setdefault(r["part_id"], []).append(r)
    return out


class TestHostileTriggers:
    """Whatever bytes arrive on <prefix>/trigger, each message gives exactly one verdict (issue #15 item 2)."""

    def test_every_payload_gets_one_verdict(self, bundle: Any, broker: Broker, line: Line, plc: Plc,
                                            tmp_path: Path) -> None:
        """Deep nesting, an over-long part_id, an oversized payload, a 17 MiB part_id: one verdict each, in order."""
        results = line.results
        daemon = line.start(triggered_config(tmp_path, broker, bundle))
        payloads = [
            json.dumps({"part_id": "first"}).encode(),
            b"[" * 50_000,  # RecursionError in json.loads (under the 64 KiB cap)
            json.dumps({"part_id": "x" * 300}).encode(),  # over the 256-character part_id cap
            json.dumps({"part_id": "padded", "pad": "y" * 70_000}).encode(),  # over mqtt.trigger_max_bytes
            b'{"part_id": "' + b"z" * (17 << 20) + b'"}',  # a 17 MiB part_id: over every cap
            json.dumps({"part_id": "last"}).encode(),
        ]
        for payload in payloads:
            assert plc.trigger(payload=payload) == "Success"
        assert results.wait_for(len(payloads), timeout=30), daemon.text()[-3000:]
        got = results.json()
        assert [r["seq"] for r in got] == list(range(len(payloads)))
        assert got[0]["part_id"] == "first" and got[-1]["part_id"] == "last"
        assert got[1]["part_id"] is None and "JSON" in got[1]["warning"]
        assert got[2]["part_id"] == "x" * 256 and "truncated" in got[2]["warning"]
        for r in got[3:5]:
            assert r["part_id"] is None and "trigger_max_bytes" in r["warning"]
        assert all(len(json.dumps(r)) < 4096 for r in got)  # PLC-sized verdicts whatever the trigger
        record("hostile triggers: 50 000 '[', 300-char part_id, 70 KiB payload, 17 MiB part_id", sent=len(payloads),
               received=len(got), different=len(tally(got).different_duplicates))
        assert "warning" not in got[0]  # a normal trigger's verdict is unchanged
        assert daemon.events("trigger_payload_invalid")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0


class TestTriggerDelivery:
    """Triggers are acknowledged only once judged; the daemon's MQTT session keeps them while it is away (item 3)."""

    def test_online_only_after_the_trigger_subscription(self, bundle: Any, tmp_path: Path, broker: Broker,
                                                         daemons: Any) -> None:
        """The broker sees the daemon's SUBSCRIBE acknowledged before its "online": online means ready for triggers.

        Read from the broker's own debug log, so the order is checked, not a race that a quiet box always wins.
        """
        broker.stop()
        with broker.config_path.open("a", encoding="utf-8") as fh:
            fh.write("log_type debug\n")
        broker.start()
        config = triggered_config(tmp_path, broker, bundle)
        client_id = next(line.split("=", 1)[1].strip().strip('"') for line in config.read_text().splitlines()
                         if line.startswith("client_id"))
        daemon = daemons(config)
        status = f"'{PREFIX}/status'"
        deadline = time.monotonic() + 20
        def lines() -> list[str]:
            return [line for line in broker.log().splitlines() if client_id in line]

        while time.monotonic() < deadline and not (
            any(f"Sending SUBACK to {client_id}" in line for line in lines())
            and any("Received PUBLISH" in line and status in line for line in lines())
        ):
            time.sleep(0.05)
        lines = lines()
        suback = next(i for i, line in enumerate(lines) if f"Sending SUBACK to {client_id}" in line)
        online = next(i for i, line in enumerate(lines) if "Received PUBLISH" in line and status in line)
        assert suback < online, "\n".join(lines[:12])
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0

    def test_sigkill_with_triggers_queued(self, bundle: Any, broker: Broker, line: Line, plc: Plc,
                                          tmp_path: Path) -> None:
        """30 triggers at a 2 fps camera, SIGKILL after 1 s, restart: every part gets a verdict, none a later frame."""
        results = line.results
        config = triggered_config(tmp_path, broker, bundle, fps=2.0)
        first = line.start(config)
        parts = [f"part-{i:02d}" for i in range(30)]
        for part in parts:
            assert plc.trigger(part) == "Success"
        time.sleep(1.0)  # the fault: a kill one second into the burst
        first.kill()
        second = line.start(config)
        assert results.wait_until(lambda m: {json.loads(p)["part_id"] for _, p, _ in m} >= set(parts), 30), (
            sorted(part_verdicts(results)), second.text()[-3000:])
        verdicts = part_verdicts(results)
        for part in parts:
            judged = verdicts[part]
            assert len(judged) <= 2, judged
            if len(judged) == 2:  # judged, then killed before the PUBACK: the redelivery is an error, not a re-judging
                assert judged[1]["verdict"] == "error" and "redelivered" in judged[1]["error"]
        # judged after the restart = judged on a frame of a later part: only errors may come from the second run
        restarted = [v for part in parts for v in verdicts[part] if "redelivered" in (v.get("error") or "")]
        record("30 triggers at a 2 fps camera, SIGKILL after 1 s, restart", sent=len(parts),
               received=len([p for p in parts if verdicts.get(p)]), different=len(tally(results.json()).different_duplicates),
               note=f"{len(restarted)} redelivered triggers get error verdicts (part not inspected)")
        assert restarted, "the broker redelivered nothing: the trigger was acknowledged before it was judged"
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0

    def test_sigterm_during_a_trigger_stream(self, bundle: Any, broker: Broker, line: Line, plc: Plc,
                                             tmp_path: Path) -> None:
        """Triggers every 10 ms across a SIGTERM: every trigger the broker accepted for the daemon gets a verdict."""
        results = line.results
        daemon = line.start(triggered_config(tmp_path, broker, bundle))
        stop = threading.Event()
        sent: list[str] = []

        def stream() -> None:
            i = 0
            while not stop.is_set():
                part = f"t-{i:04d}"
                plc.trigger(part)
                sent.append(part)
                i += 1
                time.sleep(0.01)

        publisher = threading.Thread(target=stream)
        publisher.start()
        try:
            assert results.wait_for(20, 20)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
            time.sleep(0.3)  # keep triggering while the daemon is gone: these must not count as accepted
        finally:
            stop.set()
            publisher.join(10)
        accepted = [p for p in sent if plc.acks.get(p) == "Success"]
        refused = [p for p in sent if plc.acks.get(p) != "Success"]
        assert refused, "the daemon kept its subscription after SIGTERM"
        assert results.wait_until(lambda m: {json.loads(p)["part_id"] for _, p, _ in m} >= set(accepted), 15), (
            sorted(set(accepted) - set(part_verdicts(results))), daemon.events("trigger_unsubscribed"),
            daemon.text()[-3000:])
        verdicts = part_verdicts(results)
        record("triggers every 10 ms across a SIGTERM", sent=len(accepted),
               received=len([p for p in accepted if verdicts.get(p)]),
               different=len(tally(results.json()).different_duplicates),
               note=f"{len(refused)} sent after the unsubscribe: refused by the broker (no subscriber), not accepted")
        assert all(len(verdicts[p]) == 1 for p in accepted)
        assert not set(verdicts) - set(accepted) - {None}

    def test_triggers_sent_while_the_daemon_is_away(self, bundle: Any, broker: Broker, line: Line, plc: Plc,
                                                    tmp_path: Path) -> None:
        """Killed daemon, three triggers, restart: the broker kept them; each gets an error verdict naming why."""
        results = line.results
        config = triggered_config(tmp_path, broker, bundle)
        first = line.start(config)
        first.kill()
        assert line.status.wait_until(lambda m: m[-1][1] == b"offline", 10)  # the Last Will
        parts = ["away-1", "away-2", "away-3"]
        for part in parts:
            assert plc.trigger(part) == "Success", "the broker kept no session for the daemon"
        second = line.start(config)
        assert results.wait_until(lambda m: {json.loads(p)["part_id"] for _, p, _ in m} >= set(parts), 15)
        verdicts = part_verdicts(results)
        record("3 triggers while the daemon is killed, restart", sent=3,
               received=len([p for p in parts if verdicts.get(p)]), different=0,
               note="kept by the broker (persistent session); error verdicts: parts not inspected")
        for part in parts:
            assert [v["verdict"] for v in verdicts[part]] == ["error"]
            assert "not inspected" in verdicts[part][0]["error"]
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
