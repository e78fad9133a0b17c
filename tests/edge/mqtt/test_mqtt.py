"""MQTT against a real Mosquitto: topics and payloads, Last Will, store-and-forward, triggers, TLS, passwords, 3.1.1.

Each test builds what the daemon builds: a `MqttConnection`, the `Spool`, the results `MqttSink` on it (and a
`TriggerInput` where triggers matter), and waits on the events they expose (ready = SUBACK then "online", a failed
connection attempt, everything delivered), never on a sleep.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from edge.config import MqttConfig
from edge.errors import ConfigError
from edge.mqtt.connection import Backoff, MqttConnection
from edge.mqtt.results import MqttSink
from edge.mqtt.spool import Spool
from edge.mqtt.triggers import TriggerInput, parse_trigger
from edge.pipeline import Trigger
from edge.sinks import Sink
from edge.stats import PipelineStats
from edge.verdict import Inspection, Region, Verdict

SCHEMA = json.loads((Path(__file__).parents[3] / "edge" / "result.schema.json").read_text(encoding="utf-8"))
INFO = {
    "version": "0.1.0",
    "bundle": {"name": "tiny", "hash": "abc123"},
    "source": "cam0",
    "thresholds": {"image": 1.0},
}


def make_config(host: str, port: int, tmp_path: Path, **overrides: Any) -> MqttConfig:
    """A sink config for tests: unique prefix and client id, fast reconnects, spool in tmp_path."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "host": host,
        "port": port,
        "prefix": f"test/{tag}",
        "client_id": f"inspectd-test-{tag}",
        "spool_dir": tmp_path / "spool",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
        "spool_fsync": "never",
    }
    values.update(overrides)
    return MqttConfig(**values)


def make_verdict(seq: int, kind: str = "pass", **fields: Any) -> Verdict:
    """A realistic verdict of each kind (fail with a region, error with its reason)."""
    base: dict[str, Any] = {
        "seq": seq,
        "frame_id": seq * 2,
        "ts": 1_700_000_000.0 + seq,
        "outcome": kind,
        "score": None if kind == "error" else (1.7 if kind == "fail" else 0.2),
        "threshold": 1.0,
        "latency_ms": 12.5,
        "model": {"name": "tiny", "hash": "abc123"},
        "source": "cam0",
    }
    if kind == "error":
        base["error"] = "frame is 16-bit, expected 8-bit BGR"
    if kind == "fail":
        base["regions"] = (Region((10, 20, 30, 40), 900, 3.2, 1.9),)
    base.update(fields)
    return Verdict(**base)


def inspections(seqs: range) -> list[Inspection]:
    """Inspections without pixels, cycling pass / fail / error."""
    kinds = ("pass", "fail", "error")
    return [Inspection(make_verdict(s, kinds[s % 3])) for s in seqs]


def result_seqs(collector: Any) -> list[int]:
    """The seq of every collected result, in arrival order."""
    return [m["seq"] for m in collector.json()]


def wait_for_seqs(collector: Any, n: int, timeout: float = 10.0) -> bool:
    """Wait until seqs 0..n-1 all arrived (duplicates may come too: QoS 1 is at-least-once on both legs)."""
    return collector.wait_until(lambda msgs: {json.loads(p)["seq"] for _, p, _ in msgs} >= set(range(n)), timeout)


class Stack:
    """Connection, spool and results sink as the daemon wires them; `close()` closes them in the daemon's order."""

    def __init__(self, config: MqttConfig, stats: PipelineStats | None = None) -> None:
        self.connection = MqttConnection(config, info=INFO, stats=stats)
        self.spool = Spool(config.spool_dir, int(config.spool_max_mb * 1_000_000), config.spool_fsync)
        self.sink = MqttSink(config, self.connection, self.spool, stats=stats)
        self.closed = False

    def start(self) -> Stack:
        """Start connecting."""
        self.connection.start()
        return self

    def close(self, within_s: float = 5.0) -> None:
        """Results flushed, "offline" published, disconnected, spool closed."""
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + within_s
        self.sink.close(deadline)
        self.connection.close(deadline)
        self.spool.close()


@pytest.fixture
def stack_factory():
    """Build stacks (started unless `start=False`) and close whatever a test leaves open."""
    stacks: list[Stack] = []

    def make(config: MqttConfig, *, start: bool = True, **kwargs: Any) -> Stack:
        stack = Stack(config, **kwargs)
        stacks.append(stack)
        return stack.start() if start else stack

    yield make
    for stack in stacks:
        stack.close(1.0)


def plc_client(broker: Any) -> mqtt.Client:
    """A connected MQTT 5 publisher."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


class TestTopics:
    """Topics, payloads and properties of a connected stack."""

    def test_results_arrive_in_order_and_match_the_schema(self, broker, mqtt_collector, stack_factory,
                                                           tmp_path) -> None:
        """Every verdict reaches <prefix>/result once, in seq order, small, valid against edge/result.schema.json."""
        config = make_config(broker.host, broker.port, tmp_path)
        results = mqtt_collector(f"{config.topic_prefix}/result", v5=True)
        stack = stack_factory(config)
        assert isinstance(stack.sink, Sink)
        sent = inspections(range(30))
        for inspection in sent:
            stack.sink.publish(inspection)
        assert stack.sink.wait_delivered(10)
        assert results.wait_for(30, 10)
        assert result_seqs(results) == list(range(30))
        for (_, payload, props), inspection in zip(results.messages, sent, strict=True):
            assert len(payload) < 2048
            message = json.loads(payload)
            jsonschema.validate(message, SCHEMA)
            assert message == inspection.verdict.to_dict()
            assert props.ContentType == "application/json"

    def test_schema_refuses_what_a_plc_could_not_parse(self) -> None:
        """The schema is strict enough to fail: unknown keys, a bad verdict kind, an error without its reason."""
        good = make_verdict(0, "fail").to_dict()
        no_reason = make_verdict(1, "error").to_dict() | {"error": None}
        for bad in (good | {"extra": 1}, good | {"verdict": "maybe"}, no_reason, good | {"warning": ""}):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, SCHEMA)
        jsonschema.validate(make_verdict(2, "pass", warning="part_id truncated").to_dict(), SCHEMA)

    def test_status_online_and_birth_info_are_retained(self, broker, mqtt_collector, stack_factory,
                                                       tmp_path) -> None:
        """A subscriber arriving after start-up gets the retained "online" and the JSON birth message."""
        config = make_config(broker.host, broker.port, tmp_path)
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        status = mqtt_collector(f"{config.topic_prefix}/status/#")
        assert status.wait_for(2, 5)
        got = {topic: payload for topic, payload, _ in status.messages}
        assert got[f"{config.topic_prefix}/status"] == b"online"
        assert json.loads(got[f"{config.topic_prefix}/status/info"]) == INFO

    def test_close_publishes_retained_offline(self, broker, mqtt_collector, stack_factory, tmp_path) -> None:
        """A clean close leaves "offline" retained on <prefix>/status (the Will is not sent on a clean disconnect)."""
        config = make_config(broker.host, broker.port, tmp_path)
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        stack.close()
        late = mqtt_collector(f"{config.topic_prefix}/status")
        assert late.wait_for(1, 5)
        assert late.payloads() == [b"offline"]

    def test_mask_png_for_failed_frames_with_v5_properties(self, broker, mqtt_collector, stack_factory, tmp_path):
        """A failed frame's mask arrives as a 1-bit PNG at frame size, content type image/png, user property seq."""
        config = make_config(broker.host, broker.port, tmp_path)
        masks = mqtt_collector(f"{config.topic_prefix}/mask/#", v5=True)
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)  # masks are not spooled: sent when connected
        mask = np.zeros((16, 16), np.uint8)
        mask[4:8, 2:6] = 1
        frame = np.zeros((64, 48, 3), np.uint8)  # h=64, w=48: the mask is scaled 3x wide, 4x high
        stack.sink.publish(Inspection(make_verdict(0, "pass"), frame=frame, mask=np.zeros_like(mask)))
        stack.sink.publish(Inspection(make_verdict(1, "fail"), frame=frame, mask=mask))
        stack.sink.publish(Inspection(make_verdict(2, "fail"), frame=frame, mask=mask))  # the last: order is kept
        assert masks.wait_for(2, 5)
        assert [dict(props.UserProperty)["seq"] for _, _, props in masks.messages] == ["1", "2"]  # no pass mask
        topic, payload, props = masks.messages[0]
        assert topic == f"{config.topic_prefix}/mask"
        assert props.ContentType == "image/png"
        image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 48)
        expected = np.zeros((64, 48), np.uint8)
        expected[16:32, 6:18] = 255
        np.testing.assert_array_equal(image, expected)

    @pytest.mark.parametrize(("mode", "expected"), [("never", []), ("always", ["0", "1"])])
    def test_publish_mask_modes(self, broker, mqtt_collector, stack_factory, tmp_path, mode: str,
                                expected: list[str]) -> None:
        """publish_mask = "never" sends no mask at all, "always" one per frame, pass included."""
        config = make_config(broker.host, broker.port, tmp_path, publish_mask=mode)
        masks = mqtt_collector(f"{config.topic_prefix}/mask/#", v5=True)
        results = mqtt_collector(f"{config.topic_prefix}/result", v5=True)
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        mask = np.ones((8, 8), np.uint8)
        stack.sink.publish(Inspection(make_verdict(0, "pass"), mask=mask))
        stack.sink.publish(Inspection(make_verdict(1, "fail"), mask=mask))
        assert results.wait_for(2, 5)
        assert masks.wait_for(len(expected), 5)
        # masks go out from the pipeline's thread before the forwarder sends the results, so they are all here now
        assert [dict(props.UserProperty)["seq"] for _, _, props in masks.messages] == expected

    def test_mqtt_311_mode(self, broker, mqtt_collector, stack_factory, tmp_path) -> None:
        """With protocol 3.1.1 results still arrive, and the mask goes to mask/<seq> (no properties in 3.1.1)."""
        config = make_config(broker.host, broker.port, tmp_path, protocol="3.1.1")
        everything = mqtt_collector(f"{config.topic_prefix}/#")
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        mask = np.ones((8, 8), np.uint8)
        stack.sink.publish(Inspection(make_verdict(0, "fail"), mask=mask))
        stack.sink.publish(Inspection(make_verdict(1, "pass")))
        assert stack.sink.wait_delivered(5)
        assert everything.wait_until(lambda msgs: len([m for m in msgs if m[0].endswith("/result")]) == 2, 5)
        topics = [topic for topic, _, _ in everything.messages]
        assert f"{config.topic_prefix}/mask/0" in topics
        assert f"{config.topic_prefix}/status" in topics

    def test_unix_socket_transport(self, unix_broker, stack_factory, tmp_path) -> None:
        """With transport "unix" the sink connects to the socket path given as host, and verdicts are acknowledged."""
        config = make_config(str(unix_broker.socket_path), 1883, tmp_path, transport="unix")
        stack = stack_factory(config)
        stack.sink.publish(inspections(range(1))[0])
        assert stack.sink.wait_delivered(5), stack.connection.connect_error

    def test_stats_topic(self, broker, mqtt_collector, stack_factory, tmp_path) -> None:
        """publish_stats sends the snapshot plus the sink's own connection, spool and delivery numbers."""
        config = make_config(broker.host, broker.port, tmp_path)
        stats_topic = mqtt_collector(f"{config.topic_prefix}/stats")
        stats = PipelineStats()
        stack = stack_factory(config, stats=stats)
        assert stack.connection.wait_ready(10)
        stack.sink.publish_stats(stats.snapshot())
        assert stats_topic.wait_for(1, 5)
        message = stats_topic.json()[0]
        assert message["broker_connected"] is True
        assert message["mqtt"] == {"connected": True, "spool_depth": 0, "spool_dropped": 0, "spool_write_failed": 0,
                                   "masks_dropped": 0, "no_subscribers": 0}

    def test_stats_gauges_follow_the_broker(self, broker, stack_factory, tmp_path) -> None:
        """broker_connected and spool_depth in PipelineStats track the connection and the backlog."""
        stats = PipelineStats()
        stack = stack_factory(make_config(broker.host, broker.port, tmp_path), stats=stats)
        assert stack.connection.wait_ready(10)
        assert stats.broker_connected is True
        broker.stop()
        assert stack.connection.wait_connect_failed(20)  # the reconnect failed: it noticed the broker is gone
        assert stats.broker_connected is False
        for inspection in inspections(range(3)):
            stack.sink.publish(inspection)
        assert stats.spool_depth == 3


class TestReconnects:
    """Backoff and what an outage costs in the log."""

    def test_backoff_sequence(self) -> None:
        """Delays double from min to max and stay there; reset starts over."""
        backoff = Backoff(0.1, 0.5)
        assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
        backoff.reset()
        assert backoff.next() == 0.1

    def test_connection_waits_the_backoff_sequence(self, broker, stack_factory, tmp_path) -> None:
        """With the broker down the connection waits min, 2 min, 4 min, ... max between attempts.

        Checked on the delays it chose, in order, not on the clock.
        """
        config = make_config(broker.host, broker.port, tmp_path, reconnect_min_s=0.05, reconnect_max_s=0.3)
        broker.stop()
        stack = stack_factory(config)
        deadline = time.monotonic() + 30
        while len(stack.connection.delays) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack.connection.delays[:6] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]


    def test_a_silent_paho_thread_stops_the_beat(self, broker, stack_factory, tmp_path) -> None:
        """The connection beats for paho's network thread too: when paho shows no life, the beat stops (watchdog)."""
        stats = PipelineStats()
        stack = stack_factory(make_config(broker.host, broker.port, tmp_path), stats=stats)
        assert stack.connection.wait_ready(10)
        deadline = time.monotonic() + 10
        while "mqtt-connection" not in stats.last_beats() and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.connection._paho_alive = -1e9  # what a hung paho thread looks like: no log line, no ping, for ages
        stack.connection._client.on_log = None
        deadline = time.monotonic() + 20
        while time.monotonic() - stats.last_beats()["mqtt-connection"] < 2.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert time.monotonic() - stats.last_beats()["mqtt-connection"] >= 2.5, "still beating for a silent paho"


class TestTriggers:
    """The trigger input on a real broker."""

    def test_trigger_gives_one_trigger_per_message(self, broker, stack_factory, tmp_path) -> None:
        """Each trigger message becomes one Trigger; malformed payloads still do, with part_id None and a warning."""
        config = make_config(broker.host, broker.port, tmp_path)
        stack = stack_factory(config, start=False)
        got: list[Trigger] = []
        done = threading.Event()

        def deliver(trigger: Trigger) -> None:
            got.append(trigger)
            trigger.settle()
            if len(got) == 4:
                done.set()

        TriggerInput(stack.connection, config, deliver)
        stack.start()
        assert stack.connection.wait_ready(10)  # online follows the SUBACK: triggers are heard from now on
        plc = plc_client(broker)
        try:
            for payload in (b'{"part_id": "A-17"}', b"not json", b'{"part_id": 42}', b""):
                plc.publish(config.topic_prefix + "/trigger", payload, qos=1).wait_for_publish(5)
            assert done.wait(10)
        finally:
            plc.disconnect()
            plc.loop_stop()
        assert [t.part_id for t in got] == ["A-17", None, "42", None]
        assert [t.warning is not None for t in got] == [False, True, False, False]
        assert all(t.stale is None and t.received <= time.monotonic() for t in got)

    def test_a_trigger_sent_before_the_unsuback_is_delivered(self, broker, stack_factory, tmp_path) -> None:
        """A trigger the broker accepted before it took the UNSUBSCRIBE reaches the pipeline: stop() loses none.

        The broker forwards a trigger to the daemon before it acknowledges the PLC, and answers UNSUBSCRIBE after
        everything it forwarded earlier, so such a trigger arrives between stop()'s UNSUBSCRIBE and the UNSUBACK.
        Made deterministic by holding paho's network thread in the first trigger's delivery while the second is
        accepted and stop() is called (seen under CPU pressure in tests/faults: an accepted trigger without a verdict).
        """
        config = make_config(broker.host, broker.port, tmp_path)
        stack = stack_factory(config, start=False)
        got: list[str | None] = []
        holding, release, second = threading.Event(), threading.Event(), threading.Event()

        def deliver(trigger: Trigger) -> None:  # paho's thread
            got.append(trigger.part_id)
            if len(got) == 1:
                holding.set()
                release.wait(30)
            else:
                second.set()
            trigger.settle()

        triggers = TriggerInput(stack.connection, config, deliver)
        stack.start()
        assert stack.connection.wait_ready(10)
        plc = plc_client(broker)
        reasons: list[str] = []
        plc.on_publish = lambda _c, _u, _mid, reason, _p: reasons.append(str(reason))
        topic = config.topic_prefix + "/trigger"
        try:
            plc.publish(topic, b'{"part_id": "A"}', qos=1).wait_for_publish(5)
            assert holding.wait(10), "the first trigger never arrived"
            plc.publish(topic, b'{"part_id": "B"}', qos=1).wait_for_publish(5)
            assert reasons == ["Success", "Success"]  # B accepted: the broker has sent it on to the daemon
            assert not triggers.stop(timeout=0.5), "UNSUBACK processed while paho's thread was held"
            release.set()
            assert second.wait(10), f"the trigger accepted before the unsubscribe was dropped (got {got})"
            deadline = time.monotonic() + 20
            while reasons[-1] != "No matching subscribers" and time.monotonic() < deadline:
                plc.publish(topic, b'{"part_id": "C"}', qos=1).wait_for_publish(5)
        finally:
            release.set()
            plc.disconnect()
            plc.loop_stop()
        assert reasons[-1] == "No matching subscribers", "the unsubscribe never took effect"
        assert got == ["A", "B"]

    def test_a_later_continuous_run_drops_the_kept_trigger_subscription(self, broker, stack_factory,
                                                                         tmp_path) -> None:
        """The persistent session of a triggered run keeps its subscription; a run without triggers removes it."""
        config = make_config(broker.host, broker.port, tmp_path)
        triggered = stack_factory(config, start=False)
        TriggerInput(triggered.connection, config, lambda trigger: trigger.settle())
        triggered.start()
        assert triggered.connection.wait_ready(10)
        triggered.close()
        plc = plc_client(broker)
        reasons: list[str] = []
        plc.on_publish = lambda _c, _u, _mid, reason, _p: reasons.append(str(reason))
        try:
            plc.publish(config.topic_prefix + "/trigger", b"{}", qos=1).wait_for_publish(5)
            assert reasons == ["Success"]  # the session still subscribes while nobody is connected
            continuous = stack_factory(config)
            assert continuous.connection.wait_ready(10)
            deadline = time.monotonic() + 20
            while reasons[-1] != "No matching subscribers" and time.monotonic() < deadline:
                plc.publish(config.topic_prefix + "/trigger", b"{}", qos=1).wait_for_publish(5)
        finally:
            plc.disconnect()
            plc.loop_stop()
        assert reasons[-1] == "No matching subscribers"

    @pytest.mark.parametrize(
        ("payload", "part_id", "warns"),
        [
            (b'{"part_id": "X1"}', "X1", False),  # the documented form
            (b'{"part_id": 7}', "7", False),  # PLCs often send numbers
            (b'{"part_id": null}', None, False),  # explicit "no id"
            (b"{}", None, False),  # a bare trigger as an object
            (b"  ", None, False),  # a bare trigger, empty payload
            (b"X1", None, True),  # not JSON: still a part, but say so
            (b"[1, 2]", None, True),  # JSON, but not an object
            (b"\xff\xfe", None, True),  # not even UTF-8
            (b"[" * 50_000, None, True),  # too deep for the JSON parser (RecursionError)
            (b'{"part_id": ' + b"9" * 5000 + b"}", None, True),  # an integer over Python's digit limit
            (b'{"part_id": "' + b"x" * 300 + b'"}', "x" * 256, True),  # over the part_id cap: truncated
            (b'{"part_id": "' + b"y" * 70_000 + b'"}', None, True),  # over mqtt.trigger_max_bytes: not read
        ],
    )
    def test_parse_trigger(self, payload: bytes, part_id: str | None, warns: bool) -> None:
        """parse_trigger never raises; it returns the part id (or None) and a warning only for a bad payload."""
        with capture_logs() as logs:
            got, warning = parse_trigger(payload, 65536)
        assert got == part_id
        assert (warning is not None) is warns
        assert any(e["event"] == "trigger_payload_invalid" for e in logs) is warns


_KILL_SCRIPT = """
import json, sys, time
from edge.config import MqttConfig
from edge.log import configure
from edge.mqtt.connection import MqttConnection
configure("info", "json", sys.stderr)
connection = MqttConnection(MqttConfig(**json.loads(sys.argv[1])), info={"version": "test"})
connection.start()
assert connection.wait_ready(10), connection.connect_error
print("connected", flush=True)
time.sleep(60)
"""


class TestStoreAndForward:
    """Broker outages and daemon restarts lose no verdict."""

    def test_broker_outage_mid_stream_loses_nothing(self, broker, mqtt_collector, stack_factory, tmp_path) -> None:
        """Broker down for ~3 s mid-stream: every seq arrives after the restart, first deliveries in order."""
        config = make_config(broker.host, broker.port, tmp_path)
        results = mqtt_collector(f"{config.topic_prefix}/result")
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        seq = 0
        for _ in range(20):
            stack.sink.publish(inspections(range(seq, seq + 1))[0])
            seq += 1
            time.sleep(0.01)  # the line's pace, not a synchronisation
        broker.stop()
        outage_end = time.monotonic() + 3.0
        while time.monotonic() < outage_end:  # the line keeps producing verdicts while the broker is away
            stack.sink.publish(inspections(range(seq, seq + 1))[0])
            seq += 1
            time.sleep(0.05)
        assert stack.sink.spool_depth > 0
        broker.start()
        assert stack.sink.wait_delivered(30), f"spool depth {stack.sink.spool_depth}"
        assert wait_for_seqs(results, seq)
        got = result_seqs(results)
        first_seen = list(dict.fromkeys(got))
        assert first_seen == list(range(seq))  # nothing lost, in order
        assert len(got) - len(first_seen) <= config.max_inflight  # duplicates only from re-sent in-flight messages

    def test_restart_while_broker_down_replays_the_spool(self, broker, mqtt_collector, stack_factory,
                                                         tmp_path) -> None:
        """A stack closed during an outage leaves its verdicts in the spool; the next one on that spool sends them."""
        config = make_config(broker.host, broker.port, tmp_path)
        results = mqtt_collector(f"{config.topic_prefix}/result")
        first = stack_factory(config)
        for inspection in inspections(range(5)):
            first.sink.publish(inspection)
        assert first.sink.wait_delivered(10)
        broker.stop()
        for inspection in inspections(range(5, 15)):
            first.sink.publish(inspection)
        closing = threading.Thread(target=first.close)
        closing.start()
        closing.join(30)
        assert not closing.is_alive(), "closing during an outage hung"
        broker.start()
        second = stack_factory(config)
        assert second.sink.spool_depth == 10
        assert second.sink.wait_delivered(20)
        assert wait_for_seqs(results, 15)
        assert list(dict.fromkeys(result_seqs(results))) == list(range(15))

    def test_spool_cap_during_an_outage_keeps_the_newest(self, broker, mqtt_collector, stack_factory, tmp_path):
        """At spool_max_mb the oldest verdicts go, with a warning and a count; the newest are delivered later."""
        config = make_config(broker.host, broker.port, tmp_path, spool_max_mb=0.01)
        results = mqtt_collector(f"{config.topic_prefix}/result")
        stack = stack_factory(config)
        assert stack.connection.wait_ready(10)
        broker.stop()
        assert stack.connection.wait_connect_failed(20)  # nothing may be in flight: all must go to the spool
        with capture_logs() as logs:
            for inspection in inspections(range(120)):  # ~300 B each: 36 KB through a 10 KB spool
                stack.sink.publish(inspection)
        warnings = [e for e in logs if e["event"] == "spool_full_dropped_oldest"]
        dropped = sum(e["dropped"] for e in warnings)
        assert warnings and warnings[0]["log_level"] == "warning" and dropped > 0
        broker.start()
        assert stack.sink.wait_delivered(20)
        kept = list(range(dropped, 120))
        assert results.wait_until(lambda msgs: {json.loads(p)["seq"] for _, p, _ in msgs} >= set(kept), 10)
        assert list(dict.fromkeys(result_seqs(results))) == kept

    def test_last_will_on_sigkill(self, broker, mqtt_collector, tmp_path) -> None:
        """A daemon killed with SIGKILL gets "offline" on <prefix>/status from the broker (the Last Will)."""
        config = make_config(broker.host, broker.port, tmp_path)
        status = mqtt_collector(f"{config.topic_prefix}/status")
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, config.model_dump_json()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).parents[3],
        )
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready and proc.stdout.readline().strip() == b"connected", "connection subprocess did not connect"
            assert status.wait_until(lambda msgs: b"online" in [p for _, p, _ in msgs], 5)
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
            assert status.wait_until(lambda msgs: msgs[-1][1] == b"offline", 20), status.payloads()
        finally:
            proc.kill()
            proc.wait(5)


class TestSecurity:
    """TLS and password listeners, and clear errors when credentials are wrong."""

    def test_mutual_tls_with_encrypted_client_key(self, tls_broker, stack_factory, tmp_path) -> None:
        """Over a TLS listener that requires client certificates, verdicts are delivered and acknowledged."""
        tls = tls_broker.tls
        config = make_config(
            tls_broker.host, tls_broker.port, tmp_path, tls=True, tls_ca=tls.ca, tls_cert=tls.client_cert,
            tls_key=tls.client_key, tls_key_password=SecretStr(tls.client_key_password),
        )
        stack = stack_factory(config)
        for inspection in inspections(range(3)):
            stack.sink.publish(inspection)
        assert stack.sink.wait_delivered(20), stack.connection.connect_error

    def test_tls_with_the_wrong_ca_is_refused_with_the_cause(self, tls_broker, stack_factory, tmp_path) -> None:
        """A server certificate not signed by mqtt.tls_ca fails the connection, and the error says why."""
        tls = tls_broker.tls
        config = make_config(
            tls_broker.host, tls_broker.port, tmp_path, tls=True, tls_ca=tls.client_cert, tls_cert=tls.client_cert,
            tls_key=tls.client_key, tls_key_password=SecretStr(tls.client_key_password),
        )
        with capture_logs() as logs:
            stack = stack_factory(config)
            assert stack.connection.wait_connect_failed(20)
        failed = [e for e in logs if e["event"] == "mqtt_connect_failed"]
        assert failed and "certificate verify failed" in failed[0]["error"]
        assert "certificate verify failed" in (stack.connection.connect_error or "")

    def test_wrong_key_passphrase_is_a_config_error(self, tls_broker, tmp_path) -> None:
        """A wrong client-key passphrase fails at start-up and names the setting to fix."""
        tls = tls_broker.tls
        config = make_config(
            tls_broker.host, tls_broker.port, tmp_path, tls=True, tls_ca=tls.ca, tls_cert=tls.client_cert,
            tls_key=tls.client_key, tls_key_password=SecretStr("wrong"),
        )
        with pytest.raises(ConfigError, match="INSPECTD_MQTT__TLS_KEY_PASSWORD"):
            MqttConnection(config, info=INFO)

    def test_password_listener(self, password_broker, stack_factory, tmp_path) -> None:
        """With the right user name and password verdicts are delivered."""
        b = password_broker
        config = make_config(b.host, b.port, tmp_path, username=b.username, password=SecretStr(b.password))
        stack = stack_factory(config)
        stack.sink.publish(inspections(range(1))[0])
        assert stack.sink.wait_delivered(10), stack.connection.connect_error

    def test_wrong_password_is_a_clear_error(self, password_broker, stack_factory, tmp_path) -> None:
        """A refused login is logged as an error naming the reason and where the password comes from."""
        b = password_broker
        config = make_config(b.host, b.port, tmp_path, username=b.username, password=SecretStr("nope"))
        with capture_logs() as logs:
            stack = stack_factory(config)
            assert stack.connection.wait_connect_failed(20)
            stack.sink.publish(inspections(range(1))[0])
        refused = [e for e in logs if e["event"] == "mqtt_connect_refused"]
        assert refused and refused[0]["log_level"] == "error"
        assert refused[0]["reason"] in {"Not authorized", "Bad user name or password"}
        assert "INSPECTD_MQTT__PASSWORD" in refused[0]["hint"]
        assert stack.sink.spool_depth == 1  # the verdict waits in the spool, not lost
