"""Camera benchmarks (outside the suite: `pytest -m benchmark -s tests/edge/test_cameras_bench.py`).

Report, never assert speed: frames per second received from Aravis' fake GigE camera through `GenicamSource`
(640x480 Mono8 and 1920x1080 Mono8/BayerRG8, at the negotiated 1400-byte packets and at the camera's largest,
16404 bytes, as jumbo frames would allow), and the software-triggered round trip through `inspectd run`: trigger
published -> verdict received by another MQTT client, p50/p99. The fake camera and inspectd share the box's CPUs
(and the box is shared with other sessions): these are the simulator's numbers on a loaded machine, not a camera's.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.config import SourceConfig
from edge.mqtt.connection import no_delay, stop_loop
from edge.sources.genicam import GenicamSource
from edge.stats import PipelineStats
from tests.cameras import FakeGigECamera
from tests.conftest import Broker
from tests.edge.test_cameras_daemon import bundle, camera_config, spawn, stop  # noqa: F401 - bundle is a fixture
from tests.edge.test_daemon import PREFIX

pytestmark = pytest.mark.benchmark
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
TRIGGERS = int(os.environ.get("BENCH_TRIGGERS", "200"))


def machine() -> str:
    """CPU model, ISA flags that matter, load average: recorded with every timing."""
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        if line.startswith("Model name")), "?")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    isa = ",".join(f for f in ("avx512_vnni", "amx_tile") if f in flags) or "no avx512_vnni/amx"
    return f"{model} ({isa}); load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} CPUs"


@pytest.mark.parametrize(("width", "height", "pixel_format"), [(640, 480, "Mono8"), (1920, 1080, "Mono8"),
                                                              (1920, 1080, "BayerRG8")])
@pytest.mark.parametrize("packet_size", [0, 16404])
def test_fake_gige_fps(width: int, height: int, pixel_format: str, packet_size: int, tmp_path: Path) -> None:
    """Frames per second GenicamSource receives (and converts to BGR) from the fake camera asked for 1000 fps."""
    camera = FakeGigECamera(tmp_path)
    camera.start()
    stats = PipelineStats()
    config = SourceConfig(kind="genicam", uri=camera.address, packet_socket=False, pixel_format=pixel_format,
                          sensor_roi=(0, 0, width, height), frame_rate=1000.0, packet_size=packet_size, buffers=16)
    source = GenicamSource(config, stats=stats)
    try:
        while source.read(1.0) is None:
            pass
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            frame = source.read(0.5)
            n += frame is not None and frame.image is not None
        seconds = time.monotonic() - t0
    finally:
        source.close()
        camera.close()
    print(f"\nBENCH fake-gige {width}x{height} {pixel_format} packet_size {packet_size or 'negotiated 1400'}: "
          f"{n / seconds:.1f} fps received+converted over {seconds:.1f} s, {stats.frames_dropped_camera} dropped "
          f"by camera/link, {source.dropped} skipped on the host; {machine()}")


def test_fire_to_exposure(tmp_path: Path) -> None:
    """The camera's share of the round trip: GenicamSource.fire() -> its exposure, no MQTT, no inference."""
    camera = FakeGigECamera(tmp_path)
    camera.start()
    config = SourceConfig(kind="genicam", uri=camera.address, packet_socket=False, pixel_format="Mono8",
                          trigger="software", sensor_roi=(0, 0, 640, 480))
    source = GenicamSource(config)
    times: list[float] = []
    try:
        for _ in range(TRIGGERS):
            t0 = time.perf_counter()
            frame = source.fire()
            while frame is None:
                frame = source.exposure(1.0)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        source.close()
        camera.close()
    times.sort()
    print(f"\nBENCH fire -> exposure (fake camera, 640x480 Mono8, {len(times)} triggers): p50 "
          f"{times[len(times) // 2]:.1f} ms, p99 {times[min(len(times) - 1, int(len(times) * 0.99))]:.1f} ms; "
          f"{machine()}")


def test_software_trigger_round_trip(bundle: Any, broker: Broker, mqtt_collector: Any,  # noqa: F811
                                     tmp_path: Path) -> None:
    """Trigger published -> verdict received, one part at a time, through `inspectd run` and Mosquitto.

    arv-fake-gv-camera-0.8 looks at its TriggerSoftware register on a fixed 25 Hz grid (trigger_frequency, not
    settable from its command line), so up to 40 ms of each round trip are the simulator waiting for its next tick;
    the split printed below shows inspectd's own share (exposure -> verdict -> subscriber).
    """
    camera = FakeGigECamera(tmp_path)
    camera.start()
    source = {"uri": camera.address, "packet_socket": False, "pixel_format": "Mono8", "trigger": "software",
              "sensor_roi": [0, 0, 640, 480]}
    path = camera_config(tmp_path, broker, bundle, source=source, pipeline={"mode": "triggered"})
    results = mqtt_collector(f"{PREFIX}/result")
    arrived: dict[str, tuple[float, float, dict[str, Any]]] = {}
    done = threading.Condition()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        verdict = json.loads(msg.payload)
        with done:
            arrived[verdict["part_id"]] = (time.perf_counter(), time.time(), verdict)
            done.notify_all()

    proc = spawn(path)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_socket_open = no_delay  # as a PLC gateway should (README): else Nagle adds ~40 ms on this side
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    rtts: list[float] = []
    stages: list[tuple[float, float, float]] = []  # trigger -> camera stamp, camera stamp -> verdict, -> subscriber
    try:
        assert broker.wait_subscribed(f"{PREFIX}/trigger"), "the daemon never subscribed to triggers"
        client.connect(broker.host, broker.port)
        client.subscribe(f"{PREFIX}/result", qos=1)
        client.loop_start()
        assert subscribed.wait(10)
        for i in range(TRIGGERS):
            part = f"R{i:04d}"
            sent, sent_wall = time.perf_counter(), time.time()
            client.publish(f"{PREFIX}/trigger", json.dumps({"part_id": part}), qos=1)
            with done:
                assert done.wait_for(lambda p=part: p in arrived, timeout=10), f"no verdict for {part}"
            got, got_wall, verdict = arrived[part]
            rtts.append((got - sent) * 1000)
            stamp = verdict["camera"]["timestamp_ns"] / 1e9  # the fake camera stamps with the host's wall clock
            judged = verdict["ts"] + verdict["latency_ms"] / 1000
            stages.append(((stamp - sent_wall) * 1000, (judged - stamp) * 1000, (got_wall - judged) * 1000))
    finally:
        client.disconnect()
        stop_loop(client)
        stop(proc)
        camera.close()
    errors = sum(r["verdict"] == "error" for r in results.json())
    rtts.sort()
    p50, p99 = rtts[len(rtts) // 2], rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    split = [sorted(column)[len(column) // 2] for column in zip(*stages, strict=True)]
    print(f"\nBENCH software trigger round trip (640x480 Mono8, {len(rtts)} parts, {errors} errors): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {rtts[-1]:.1f} ms; medians: trigger published -> camera "
          f"timestamp {split[0]:.1f} ms (MQTT in + TriggerSoftware + the simulator's 25 Hz tick), -> verdict "
          f"{split[1]:.1f} ms (transfer + pipeline), -> subscriber {split[2]:.1f} ms (MQTT out); {machine()}")
