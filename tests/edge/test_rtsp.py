"""The `rtsp` source against a real RTSP server (GStreamer's gst-rtsp-server on loopback), through `inspectd run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge.bundle import Bundle
from tests.bundles import make_tiny_bundle
from tests.cameras import RtspServer
from tests.conftest import Broker
from tests.edge.test_cameras_daemon import finish, spawn
from tests.edge.test_daemon import PREFIX, write_config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def test_stream_outage_and_resume(bundle: Bundle, broker: Broker, mqtt_collector: Any, tmp_path: Path) -> None:
    """Test-pattern stream -> verdicts; the server killed and started again -> one outage error verdict, then resume.

    The reconnect is the daemon's own backoff; the stream resumes on the same URL.
    """
    server = RtspServer(tmp_path)
    server.start()
    source = {"kind": "rtsp", "uri": server.url, "stall_timeout_s": 3.0, "reconnect_min_s": 0.2,
              "reconnect_max_s": 1.0}
    results = mqtt_collector(f"{PREFIX}/result")
    proc = spawn(write_config(tmp_path, broker, bundle, tmp_path, source=source))

    def judged() -> int:
        return sum(r["verdict"] != "error" for r in results.json())

    try:
        assert results.wait_until(lambda _: judged() >= 5, timeout=40), results.json()[-3:]
        server.stop()
        assert results.wait_until(lambda m: bool(m) and results.json()[-1]["verdict"] == "error", timeout=15)
        time.sleep(1.0)  # reconnects fail meanwhile: still one verdict for the outage
        server.start()
        before = judged()
        assert results.wait_until(lambda _: judged() >= before + 5, timeout=40)
    finally:
        proc.terminate()
        code, events = finish(proc, timeout=30)
        server.stop()
    got = results.json()
    errors = [r for r in got if r["verdict"] == "error"]
    assert len(errors) == 1 and "camera cam0 lost" in errors[0]["error"], [r["error"] for r in errors]
    assert [r["seq"] for r in got] == list(range(len(got)))
    assert "camera" not in got[0]  # the GenICam-only key stays off other sources' verdicts
    assert [e for e in events if e.get("event") == "camera_reconnected"] and code == 0
