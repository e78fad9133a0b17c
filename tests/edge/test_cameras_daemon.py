"""GenICam cameras end to end: `inspectd run` (a subprocess) against simulated cameras.

Verdicts are read by an independent MQTT subscriber from a real Mosquitto. Cameras: the genicam wheel's Viky GenTL producer through harvesters, and Aravis' fake GigE Vision camera
(arv-fake-gv-camera-0.8, real GVCP/GVSP on loopback). The fake camera stamps frames with the host's wall clock, so a
verdict's `camera.timestamp_ns` can be compared with the moment a test published its trigger.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from edge.bundle import Bundle
from edge.mqtt.connection import stop_loop
from tests.bundles import make_tiny_bundle
from tests.cameras import FakeGigECamera, viky_cti
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, ROOT, SCHEMA, daemon_cmd, write_config

FAST_CAMERA = {"stall_timeout_s": 1.0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def camera_config(tmp_path: Path, broker: Broker, bundle: Bundle, **sections: dict[str, Any]) -> Path:
    """write_config with a genicam [source] (its keys merged over the folder defaults, features as a table)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = {"kind": "genicam", "uri": "", **sections.get("source", {})}
    features = source.pop("features", {})
    path = write_config(tmp_path, broker, bundle, tmp_path, **(sections | {"source": source}))
    lines = [f"{name} = {json.dumps(value)}" for name, value in features.items()]
    path.write_text(path.read_text(encoding="utf-8") + "[source.features]\n" + "\n".join(lines) + "\n")
    return path


def spawn(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(daemon_cmd(config, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
    """Wait for the daemon; its exit code and its JSON log lines."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"daemon did not exit within {timeout:g} s; log tail:\n{stderr[-3000:]}")
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # FFmpeg, Aravis and faulthandler write plain lines
    return proc.returncode, events


def configured(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `settings` of each camera_configured log line (what the camera read back at each connect)."""
    return [e["settings"] for e in events if e.get("event") == "camera_configured"]


def stop(proc: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]]]:
    proc.terminate()
    return finish(proc, timeout=30)


def next_id(frame_id: int) -> int:
    """The GigE Vision 1.x block id after `frame_id` (16 bits, 0 never used)."""
    return frame_id % 0xFFFF + 1


class TestFreeRunning:
    """Continuous verdicts through both drivers, pixel formats converted, settings applied and read back."""

    @pytest.mark.parametrize("pixel_format", ["RGBa8", "Mono8"])
    def test_viky_through_harvesters(self, pixel_format: str, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                     tmp_path: Path) -> None:
        """Viky (GenTL) frames become verdicts; PixelFormat and AcquisitionFrameRate are set and read back."""
        source = {"driver": "harvesters", "cti": str(viky_cti()), "uri": "VikyTL_DEV_green",
                  "pixel_format": pixel_format, "features": {"AcquisitionFrameRate": 40.0}}
        results = mqtt_collector(f"{PREFIX}/result")
        code, events = finish(spawn(camera_config(tmp_path, broker, bundle, source=source), "--max-frames", "6"))
        assert code == 0, events[-5:]
        got = results.json()
        assert [r["seq"] for r in got] == list(range(6))
        assert all(r["verdict"] in {"pass", "fail"} for r in got), got
        ids = [r["camera"]["frame_id"] for r in got]
        assert ids == sorted(ids) and len(set(ids)) == 6
        for r in got:
            jsonschema.validate(r, SCHEMA)
        assert configured(events)[0] == {"PixelFormat": pixel_format, "AcquisitionMode": "Continuous",
                                         "AcquisitionFrameRate": 40.0}

    def test_fake_gige_bayer_through_aravis(self, fake_gige: FakeGigECamera, bundle: Bundle, broker: Broker,
                                           mqtt_collector: Any, tmp_path: Path) -> None:
        """The fake GigE camera in BayerRG8 with a sensor ROI, exposure, frame rate and a raw feature."""
        source = {"uri": fake_gige.serial, "packet_socket": False, "pixel_format": "BayerRG8",
                  "sensor_roi": [16, 8, 320, 240], "exposure_us": 2000.0, "frame_rate": 20.0,
                  "features": {"GainRaw": 4}}
        results = mqtt_collector(f"{PREFIX}/result")
        started = time.time()
        code, events = finish(spawn(camera_config(tmp_path, broker, bundle, source=source), "--max-frames", "6"))
        assert code == 0, events[-5:]
        got = results.json()
        assert len(got) == 6 and all(r["verdict"] in {"pass", "fail"} for r in got), got
        assert all(started < r["camera"]["timestamp_ns"] / 1e9 < time.time() for r in got)
        settings = configured(events)[0]
        assert {k: settings[k] for k in ("PixelFormat", "Width", "Height", "OffsetX", "OffsetY", "GainRaw")} == {
            "PixelFormat": "BayerRG8", "Width": 320, "Height": 240, "OffsetX": 16, "OffsetY": 8, "GainRaw": 4}
        assert settings["ExposureTimeAbs"] == pytest.approx(2000.0) and settings["TriggerMode"] == "Off"
        assert settings["AcquisitionFrameRate"] == pytest.approx(20.0, rel=1e-3)


class TestSoftwareTrigger:
    def test_20_triggers_20_exposures(self, fake_gige: FakeGigECamera, bundle: Bundle, broker: Broker,
                                      mqtt_collector: Any, tmp_path: Path) -> None:
        """20 trigger messages give 20 verdicts with their part_ids, each judged on its own exposure.

        The exposure its own TriggerSoftware caused: consecutive camera frame ids, each stamped after its trigger was
        published, and no exposure at all between triggers.
        """
        source = {"uri": fake_gige.address, "packet_socket": False, "pixel_format": "Mono8", "trigger": "software"}
        path = camera_config(tmp_path, broker, bundle, source=source, pipeline={"mode": "triggered"})
        results = mqtt_collector(f"{PREFIX}/result")
        proc = spawn(path)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        published: list[float] = []
        try:
            assert broker.wait_subscribed(f"{PREFIX}/trigger"), "the daemon never subscribed to triggers"
            client.connect(broker.host, broker.port)
            client.loop_start()
            for i in range(20):
                time.sleep(0.05)  # the camera is idle between parts; nothing may come from it
                published.append(time.time())
                client.publish(f"{PREFIX}/trigger", json.dumps({"part_id": f"P{i:02d}"}), qos=1)
                assert results.wait_for(i + 1, timeout=10), f"no verdict for trigger {i}"
        finally:
            client.disconnect()
            stop_loop(client)
            code, events = stop(proc)
        assert code == 0, events[-5:]
        got = results.json()
        assert [r["part_id"] for r in got] == [f"P{i:02d}" for i in range(20)]
        assert all(r["verdict"] in {"pass", "fail"} for r in got), [r["error"] for r in got]
        ids = [r["camera"]["frame_id"] for r in got]
        assert all(b == next_id(a) for a, b in zip(ids, ids[1:], strict=False)), ids  # one exposure per trigger
        stamps = [r["camera"]["timestamp_ns"] / 1e9 for r in got]
        assert all(t_pub < t_cam for t_pub, t_cam in zip(published, stamps, strict=True))  # never from before
        assert configured(events)[0]["TriggerSource"] == "Software" and configured(events)[0]["TriggerMode"] == "On"
        assert not [e for e in events if e.get("event") == "stale_exposures_discarded"]


class TestHardwareTrigger:
    def test_part_ids_without_exposures_are_errors(self, fake_gige: FakeGigECamera, bundle: Bundle, broker: Broker,
                                                   mqtt_collector: Any, tmp_path: Path) -> None:
        """Hardware trigger on Line0 with no pulse: each part id that no exposure pairs with is an error verdict.

        The camera is configured for the line (read back), and nothing is judged on a frame that was not triggered.
        """
        source = {"uri": fake_gige.address, "packet_socket": False, "trigger": "hardware", "trigger_source": "Line0"}
        path = camera_config(tmp_path, broker, bundle, source=source,
                             pipeline={"mode": "triggered", "trigger_timeout_s": 0.5})
        results = mqtt_collector(f"{PREFIX}/result")
        proc = spawn(path)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            assert broker.wait_subscribed(f"{PREFIX}/trigger"), "the daemon never subscribed to triggers"
            client.connect(broker.host, broker.port)
            client.loop_start()
            for part in ("H1", "H2", "H3"):
                client.publish(f"{PREFIX}/trigger", json.dumps({"part_id": part}), qos=1)
            assert results.wait_for(3, timeout=10)
        finally:
            client.disconnect()
            stop_loop(client)
            code, events = stop(proc)
        got = results.json()
        assert [(r["part_id"], r["verdict"]) for r in got] == [("H1", "error"), ("H2", "error"), ("H3", "error")]
        assert all("no exposure from camera cam0 within 0.5 s" in r["error"] for r in got)
        settings = configured(events)[0]
        assert (settings["TriggerMode"], settings["TriggerSource"], settings["TriggerActivation"]) == (
            "On", "Line0", "RisingEdge")
        assert code == 0


class TestOutage:
    def test_late_camera_killed_and_restarted(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                              tmp_path: Path) -> None:
        """A camera that appears only after start, is killed mid-stream and comes back.

        One outage error verdict per outage, reconnects, and the stream resumes each time.
        """
        camera = FakeGigECamera(tmp_path)
        camera.lock()
        source = {"uri": camera.address, "packet_socket": False, "pixel_format": "Mono8", "frame_rate": 15.0,
                  **FAST_CAMERA}
        results = mqtt_collector(f"{PREFIX}/result")
        proc = spawn(camera_config(tmp_path, broker, bundle, source=source))

        def judged() -> int:
            return sum(r["verdict"] != "error" for r in results.json())

        try:
            assert results.wait_for(1, timeout=30)  # no camera yet: the outage report
            camera.start()
            assert results.wait_until(lambda _: judged() >= 5, timeout=20)
            camera.stop()
            assert results.wait_until(lambda _: results.json()[-1]["verdict"] == "error", timeout=10)
            time.sleep(1.5)  # reconnect attempts fail meanwhile: still one verdict for the outage
            camera.start()
            before = judged()
            assert results.wait_until(lambda _: judged() >= before + 5, timeout=20)
        finally:
            code, events = stop(proc)
            camera.close()
        got = results.json()
        outcomes = [r["verdict"] for r in got]
        errors = [r for r in got if r["verdict"] == "error"]
        assert len(errors) == 2, [r["error"] for r in errors]
        assert outcomes[0] == "error" and "cannot open" in errors[0]["error"]
        assert "camera cam0 lost" in errors[1]["error"]
        assert [r["seq"] for r in got] == list(range(len(got)))
        second = outcomes.index("error", 1)
        assert "error" not in outcomes[1:second] and "error" not in outcomes[second + 1:]
        reconnected = [e for e in events if e.get("event") == "camera_reconnected"]
        assert len(reconnected) == 2 and code == 0


class TestRefusedSettings:
    def test_exit_2_with_the_cameras_range(self, fake_gige: FakeGigECamera, bundle: Bundle, broker: Broker,
                                           tmp_path: Path) -> None:
        """An out-of-range value and a feature the camera lacks stop start-up with exit 2 and the camera's range.

        Fake GigE: GainRaw is 0..10; Viky has AcquisitionFrameRate, not AcquisitionFramerate.
        """
        out_of_range = camera_config(tmp_path / "a", broker, bundle, source={
            "uri": fake_gige.address, "packet_socket": False, "features": {"GainRaw": 30}})
        unknown = camera_config(tmp_path / "b", broker, bundle, source={
            "driver": "harvesters", "cti": str(viky_cti()), "features": {"AcquisitionFramerate": 10.0}})
        procs = [spawn(out_of_range), spawn(unknown)]
        outs = [(p.wait(timeout=60), p.communicate()[1]) for p in procs]
        assert outs[0][0] == 2 and "source.features.GainRaw = 30: out of range: GainRaw must be 0..10" in outs[0][1]
        assert outs[1][0] == 2 and "no feature 'AcquisitionFramerate'; did you mean AcquisitionFrameRate" in outs[1][1]


class TestCheck:
    def test_lists_cameras_and_grabs_a_frame(self, fake_gige: FakeGigECamera, bundle: Bundle, broker: Broker,
                                             tmp_path: Path) -> None:
        """`inspectd check --config` lists the cameras each driver finds and grabs a frame from the configured one.

        Each camera with model, serial, address and pixel formats.
        """
        gige = camera_config(tmp_path / "a", broker, bundle, source={
            "uri": fake_gige.serial, "packet_socket": False, "pixel_format": "Mono8"})
        viky = camera_config(tmp_path / "b", broker, bundle, source={
            "driver": "harvesters", "cti": str(viky_cti()), "uri": "2"})
        cmds = [[*daemon_cmd(c)[:3], "check", "--config", str(c), "--frames", "1"] for c in (gige, viky)]
        procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in cmds]
        outs = [p.communicate(timeout=90) for p in procs]
        gige_out, viky_out = outs[0][0], outs[1][0]
        assert procs[0].returncode == 0, gige_out + outs[0][1]
        assert f"Aravis Fake (serial {fake_gige.serial}, 127.0.0.1)" in gige_out
        assert "pixel formats BayerBG8, BayerGB8, BayerGR8, BayerRG8, Mono8, RGB8, Mono16" in gige_out
        assert "got a 512x512 frame; PixelFormat=Mono8" in gige_out
        assert procs[1].returncode == 0, viky_out + outs[1][1]
        assert viky_out.count("Viky (serial") == 3 and viky_out.count("pixel formats RGBa8, Mono8") == 3
        assert "got a 400x400 frame" in viky_out
