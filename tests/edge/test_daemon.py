"""`inspectd run` end to end against a real Mosquitto: verdicts, outages, restarts, triggers, signals, bad start-ups.

Daemons run in-process (`run_daemon`) where only the MQTT behaviour matters, and as subprocesses
(`python -m edge run`) where signals and exit codes do.
"""

from __future__ import annotations

import json
import os
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
import onnxruntime as ort
import paho.mqtt.client as mqtt
import pytest

from edge.bundle import Bundle
from edge.config import load_config
from edge.daemon import run_daemon
from edge.mqtt.connection import stop_loop
from tests.bundles import blob_frame, make_tiny_bundle
from tests.conftest import Broker

PREFIX = "test/line/station"
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "edge" / "result.schema.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny real bundle shared by the module's tests."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def write_frames(folder: Path, n: int) -> None:
    """Write `n` 64x64 PNGs: random dark levels, about 40% with a white blob."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        level = int(rng.integers(0, 120))
        box = None
        if rng.random() < 0.4:
            w, h = (int(v) for v in rng.integers(2, 12, size=2))
            box = (int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h)), w, h)
        cv2.imwrite(str(folder / f"{i:04d}.png"), blob_frame(64, 64, box, level=level))


def write_config(tmp_path: Path, broker: Broker, bundle: Bundle, frames: Path, **extra: dict[str, Any]) -> Path:
    """A config file in tmp_path with relative paths (resolved against its folder) and fast reconnects."""
    sections: dict[str, dict[str, Any]] = {
        "model": {"bundle": os.path.relpath(bundle.path, tmp_path), "threads": 1},
        "source": {"kind": "folder", "uri": os.path.relpath(frames, tmp_path)},
        "pipeline": {"shutdown_timeout_s": 10.0},
        "mqtt": {"host": broker.host, "port": broker.port, "prefix": PREFIX, "spool_dir": "spool",
                 "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "stats_interval_s": 0.5,
                 "client_id": f"inspectd-{uuid.uuid4().hex[:8]}"},
        "metrics": {"enabled": False},
        "log": {"format": "json"},
    }
    for name, values in extra.items():
        sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def offline_verdicts(bundle: Bundle, frames: Path) -> list[tuple[str, float]]:
    """The bundle's own evaluation of the images: ONNX Runtime directly, score >= 1.0 is a defect."""
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    images = np.stack([cv2.imread(str(p)) for p in sorted(frames.glob("*.png"))])
    scores, _, _ = session.run(None, {"image": images})
    return [("fail" if s >= 1.0 else "pass", float(s)) for s in scores]


def in_order_without_duplicates(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop re-deliveries (same seq, same payload) and check what remains never goes backwards."""
    seen: dict[int, dict[str, Any]] = {}
    ordered = []
    for r in results:
        if r["seq"] in seen:
            assert seen[r["seq"]] == r, f"two different verdicts share seq {r['seq']}"
            continue
        seen[r["seq"]] = r
        ordered.append(r)
    return ordered


def daemon_cmd(config: Path, *args: str) -> list[str]:
    """The `inspectd run` command line of a subprocess daemon."""
    return [sys.executable, "-m", "edge", "run", "--config", str(config), *args]


def spawn(config: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start a daemon subprocess from the repository root."""
    return subprocess.Popen(daemon_cmd(config, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class TestDaemonStream:
    """Continuous mode over MQTT."""
    def test_folder_of_200_matches_offline(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                           tmp_path: Path) -> None:
        """200 images give 200 verdicts, seq 0..199, each the same as the bundle's offline evaluation."""
        frames = tmp_path / "frames"
        write_frames(frames, 200)
        config = load_config(write_config(tmp_path, broker, bundle, frames), base_dir=tmp_path)
        results = mqtt_collector(f"{PREFIX}/result")
        info = mqtt_collector(f"{PREFIX}/status/info")
        stats = mqtt_collector(f"{PREFIX}/stats")
        outcome = run_daemon(config, base_dir=tmp_path)
        assert outcome["exit_code"] == 0 and outcome["delivered"] and outcome["published"] == 200
        assert results.wait_for(200, timeout=20)
        got = results.json()
        assert [r["seq"] for r in got] == list(range(200))
        expected = offline_verdicts(bundle, frames)
        assert [r["verdict"] for r in got] == [v for v, _ in expected]
        assert [r["score"] for r in got] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert {r["verdict"] for r in got} == {"pass", "fail"}
        for r in got:
            jsonschema.validate(r, SCHEMA)
        assert all(r["model"] == {"name": "tiny", "hash": bundle.short_hash} for r in got)
        assert info.wait_for(1) and info.json()[0]["bundle"]["hash"] == bundle.short_hash
        assert stats.wait_until(lambda m: any(json.loads(p)["frames_captured"] == 200 for _, p, _ in m), timeout=5)
        final = stats.json()[-1]
        assert sum(final["verdicts"].values()) == 200 and final["frames_skipped"] == 0
        assert final["latency"]["infer"]["count"] == 200

    def test_broker_outage_loses_nothing(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                         tmp_path: Path) -> None:
        """Broker down for 10 s mid-stream: every verdict still arrives, in order, duplicates only with the same seq.

        At 30 fps about 300 verdicts are judged while the broker is gone; they wait in the spool and are replayed.
        """
        frames = tmp_path / "frames"
        write_frames(frames, 20)
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": 30})
        config = load_config(path, base_dir=tmp_path)
        results = mqtt_collector(f"{PREFIX}/result")
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(run_daemon(config, max_frames=450, base_dir=tmp_path)))
        thread.start()
        assert results.wait_for(20, timeout=10)
        broker.stop()
        time.sleep(10)
        broker.start()
        thread.join(120)  # bounds a hang only; it ends once the 450 verdicts are acknowledged
        assert not thread.is_alive() and "exit_code" in outcome, "run_daemon hung or raised"
        assert outcome["exit_code"] == 0 and outcome["delivered"]
        assert results.wait_until(lambda m: len({json.loads(p)["seq"] for _, p, _ in m}) >= 450, timeout=20)
        ordered = in_order_without_duplicates(results.json())
        assert [r["seq"] for r in ordered] == list(range(450))

    def test_spool_survives_restart_while_broker_down(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                                      tmp_path: Path) -> None:
        """Verdicts of a daemon that stopped while the broker was down are sent by the next daemon, seq continuing."""
        frames = tmp_path / "frames"
        write_frames(frames, 10)
        config = load_config(write_config(tmp_path, broker, bundle, frames, pipeline={"shutdown_timeout_s": 0.5}),
                             base_dir=tmp_path)
        results = mqtt_collector(f"{PREFIX}/result")
        broker.stop()
        first = run_daemon(config, max_frames=8, base_dir=tmp_path)
        assert first["exit_code"] == 1 and not first["delivered"]  # not acknowledged: --max-frames must not say 0
        assert (tmp_path / "spool" / "spool.db").is_file()
        broker.start()
        second = run_daemon(config, max_frames=4, base_dir=tmp_path)
        assert second["exit_code"] == 0 and second["delivered"]
        assert results.wait_until(lambda m: len({json.loads(p)["seq"] for _, p, _ in m}) >= 12, timeout=20)
        ordered = in_order_without_duplicates(results.json())
        assert [r["seq"] for r in ordered] == list(range(12))
        assert [r["frame_id"] for r in ordered] == list(range(12))  # frame_id carries on across restarts, like seq


class TestDaemonTriggered:
    """Triggered mode over MQTT."""
    def test_50_triggers_50_verdicts(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                     tmp_path: Path) -> None:
        """50 trigger messages with distinct part_ids give 50 verdicts carrying exactly those part_ids."""
        frames = tmp_path / "frames"
        write_frames(frames, 7)
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True}, pipeline={"mode": "triggered"})
        config = load_config(path, base_dir=tmp_path)
        results = mqtt_collector(f"{PREFIX}/result")
        status = mqtt_collector(f"{PREFIX}/status")
        stop = threading.Event()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(run_daemon(config, stop=stop, base_dir=tmp_path)))
        thread.start()
        try:
            # "online" comes after the trigger SUBACK: a trigger sent now is heard (no sleep, on any box)
            assert status.wait_until(lambda m: any(p == b"online" for _, p, _ in m), timeout=30)
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect(broker.host, broker.port)
            client.loop_start()
            parts = [f"part-{i:03d}" for i in range(50)]
            for part in parts:
                client.publish(f"{PREFIX}/trigger", json.dumps({"part_id": part}), qos=1).wait_for_publish(5)
            assert results.wait_for(50, timeout=20)
            client.disconnect()
            stop_loop(client)
        finally:
            stop.set()
            thread.join(60)
        assert not thread.is_alive() and "exit_code" in outcome, "run_daemon hung or raised"
        got = results.json()
        assert sorted(r["part_id"] for r in got) == parts
        assert [r["part_id"] for r in got] == parts  # and in trigger order
        assert [r["seq"] for r in got] == list(range(50))
        assert all(r["verdict"] in {"pass", "fail"} for r in got)
        for r in got:
            jsonschema.validate(r, SCHEMA)
        assert outcome["exit_code"] == 0


class TestDaemonProcess:
    """The daemon as a process: signals and exit codes."""
    def test_sigterm_publishes_offline_and_exits_0(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                                   tmp_path: Path) -> None:
        """SIGTERM: in-flight verdicts are published, then retained offline, and the process exits 0."""
        frames = tmp_path / "frames"
        write_frames(frames, 10)
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": 40})
        results = mqtt_collector(f"{PREFIX}/result")
        status = mqtt_collector(f"{PREFIX}/status")
        proc = spawn(path)
        try:
            assert results.wait_for(10, timeout=15), proc.stderr.read1().decode() if proc.poll() is not None else ""  # type: ignore[union-attr]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        finally:
            proc.kill()
        assert status.wait_until(lambda m: m and m[-1][1] == b"offline", timeout=5)
        stderr = proc.stderr.read().decode()  # type: ignore[union-attr]
        stopped = [json.loads(line) for line in stderr.splitlines() if '"daemon_stopped"' in line]
        assert stopped and stopped[0]["exit_code"] == 0
        published = stopped[0]["published"]
        assert results.wait_until(lambda m: len(m) >= published, timeout=5)
        assert [r["seq"] for r in in_order_without_duplicates(results.json())] == list(range(published))

    def test_sigkill_last_will(self, bundle: Bundle, broker: Broker, mqtt_collector: Any, tmp_path: Path) -> None:
        """SIGKILL: the broker publishes the Last Will, retained offline."""
        frames = tmp_path / "frames"
        write_frames(frames, 5)
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": 20})
        status = mqtt_collector(f"{PREFIX}/status")
        proc = spawn(path)
        try:
            assert status.wait_until(lambda m: any(p == b"online" for _, p, _ in m), timeout=15)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
        finally:
            proc.kill()
        assert status.wait_until(lambda m: m[-1][1] == b"offline", timeout=10)

    def test_sigkill_while_broker_down_spool_and_seq_survive(self, bundle: Bundle, broker: Broker,
                                                              mqtt_collector: Any, tmp_path: Path) -> None:
        """Killed while the broker is down: the next daemon sends the spooled verdicts, then continues their seq."""
        frames = tmp_path / "frames"
        write_frames(frames, 5)
        path = write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": 40})
        results = mqtt_collector(f"{PREFIX}/result")
        broker.stop()
        proc = spawn(path)
        state = tmp_path / "spool" / "seq.json"
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if state.is_file() and json.loads(state.read_text() or '{"next": 0}').get("next", 0) >= 10:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)
        finally:
            proc.kill()
        killed_at = json.loads(state.read_text())["next"]
        assert killed_at >= 10
        broker.start()
        outcome = run_daemon(load_config(path, base_dir=tmp_path), max_frames=5, base_dir=tmp_path)
        assert outcome["exit_code"] == 0
        assert results.wait_until(lambda m: len({json.loads(p)["seq"] for _, p, _ in m}) >= killed_at + 5, timeout=20)
        seqs = [r["seq"] for r in in_order_without_duplicates(results.json())]
        assert seqs == list(range(seqs[-1] + 1))  # no seq missing: a SIGKILL loses no verdict
        # the next run continues after the last verdict handed to the spool (seq.json, or the spool if it was later)
        assert seqs[-5] in (killed_at, killed_at + 1)

    def test_bad_start_exits_2(self, bundle: Bundle, broker: Broker, tmp_path: Path) -> None:
        """A bad config, a tampered bundle or a forced int8 without INT8 stop start-up with exit code 2 and a message."""
        frames = tmp_path / "frames"
        write_frames(frames, 2)
        bad = tmp_path / "bad"
        bad.mkdir()
        bad_config = write_config(bad, broker, bundle, frames, mqtt={"port": 70000})
        tampered = tmp_path / "tampered"
        tampered.mkdir()
        for file in bundle.path.iterdir():
            (tampered / file.name).write_bytes(file.read_bytes())
        model = tampered / "model.onnx"
        model.write_bytes(model.read_bytes() + b"\0")
        good = tmp_path / "good"
        good.mkdir()
        tampered_config = write_config(good, broker, Bundle(path=tampered, meta=bundle.meta), frames)
        int8 = tmp_path / "int8"
        int8.mkdir()
        int8_config = write_config(int8, broker, bundle, frames, model={"precision": "int8"})
        procs = [spawn(bad_config), spawn(tampered_config), spawn(tampered_config, "--max-frames", "0"),
                 spawn(int8_config)]
        outs = [(p.wait(timeout=30), p.stderr.read().decode()) for p in procs]  # type: ignore[union-attr]
        assert outs[0][0] == 2 and "mqtt.port: must be 1..65535, got 70000" in outs[0][1]
        assert outs[1][0] == 2 and "model.onnx has SHA-256" in outs[1][1] and "re-export" in outs[1][1]
        assert outs[2][0] == 2 and "--max-frames must be >= 1" in outs[2][1]
        assert outs[3][0] == 2 and "model.precision = 'int8' but bundle" in outs[3][1] and "calibrate" in outs[3][1]
