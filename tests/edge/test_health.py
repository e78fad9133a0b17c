"""Prometheus `/metrics` served over real HTTP from a real PipelineStats."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config import MetricsConfig
from edge.daemon import run_daemon
from edge.health import serve_metrics
from edge.stats import STAGES, PipelineStats
from tests.bundles import blob_frame, tiny_daemon_config
from tests.conftest import Broker


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """GET /metrics and parse it: sample name -> [(labels, value)]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    matches = [v for lab, v in samples[name] if all(lab.get(k) == want for k, want in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {samples.get(name)}"
    return matches[0]


@pytest.fixture
def stats() -> PipelineStats:
    """Stats of a pipeline that judged three frames, skipped one and has a broker and a spool."""
    s = PipelineStats()
    for _ in range(4):
        s.frame_captured()
    s.frame_skipped()
    for kind in ("pass", "pass", "fail", "error"):
        s.verdict(kind)
    s.camera_reconnect()
    s.set_broker(True, spool_depth=7)
    s.set_queue_depth("frames", 2)
    s.backend = "onnxruntime"
    for stage in STAGES:
        s.observe(stage, 0.004)
    s.observe("infer", 0.2)
    return s


@pytest.fixture
def served(stats: PipelineStats) -> Iterator[int]:
    """The metrics server on a free port for `stats`; yields the port."""
    port = free_port()
    stop = serve_metrics(MetricsConfig(host="127.0.0.1", port=port), stats)
    yield port
    stop()


class TestServeMetrics:
    """serve_metrics: a real HTTP server rendering a real PipelineStats."""

    def test_lists_the_metrics(self, served: int) -> None:
        """Every documented metric is served with the stats' values."""
        samples = scrape(served)
        assert value(samples, "inspectd_frames_captured_total") == 4
        assert value(samples, "inspectd_frames_skipped_total") == 1
        assert value(samples, "inspectd_verdicts_total", verdict="pass") == 2
        assert value(samples, "inspectd_verdicts_total", verdict="fail") == 1
        assert value(samples, "inspectd_verdicts_total", verdict="error") == 1
        assert value(samples, "inspectd_camera_reconnects_total") == 1
        assert value(samples, "inspectd_camera_outages_total") == 0
        assert value(samples, "inspectd_broker_connected") == 1
        assert value(samples, "inspectd_spool_depth") == 7
        assert value(samples, "inspectd_queue_depth", queue="frames") == 2
        assert value(samples, "inspectd_backend_info", backend="onnxruntime") == 1
        assert value(samples, "inspectd_process_resident_memory_bytes") > 0

    def test_fps_is_verdicts_over_the_recent_span(self) -> None:
        """inspectd_fps is the verdicts published in the window divided by the time since the first of them."""
        stats = PipelineStats()
        first = time.monotonic()
        for kind in ["pass"] * 30 + ["fail"] * 10:
            stats.verdict(kind)
        last = time.monotonic()
        port = free_port()
        stop = serve_metrics(MetricsConfig(host="127.0.0.1", port=port), stats)
        try:
            before = time.monotonic()
            samples = scrape(port)
            after = time.monotonic()
        finally:
            stop()
        fps = value(samples, "inspectd_fps")
        # 40 verdicts between `first` and `last`, read at some moment between `before` and `after`
        assert 40 / (after - first) - 0.001 <= fps <= 40 / (before - last) + 0.001
        assert value(samples, "inspectd_verdicts_total", verdict="pass") == 30

    def test_help_texts(self, served: int) -> None:
        """The HELP lines say what the numbers mean: a skipped frame gets no verdict (by design)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{served}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        docs = {f.name: f.documentation for f in text_string_to_metric_families(text)}
        assert "no verdict" in docs["inspectd_frames_skipped"]
        assert "error verdict" not in docs["inspectd_frames_skipped"]

    def test_latency_histograms_per_stage(self, served: int) -> None:
        """Each stage has a cumulative histogram whose buckets, count and sum match what was observed."""
        samples = scrape(served)
        for stage in STAGES:
            n = 2 if stage == "infer" else 1
            assert value(samples, "inspectd_stage_latency_seconds_count", stage=stage) == n
            assert value(samples, "inspectd_stage_latency_seconds_bucket", stage=stage, le="+Inf") == n
        assert value(samples, "inspectd_stage_latency_seconds_bucket", stage="infer", le="0.005") == 1
        assert value(samples, "inspectd_stage_latency_seconds_bucket", stage="infer", le="0.25") == 2
        assert value(samples, "inspectd_stage_latency_seconds_sum", stage="infer") == pytest.approx(0.204)

    def test_read_at_scrape_time(self, served: int, stats: PipelineStats) -> None:
        """A change in the stats shows in the next scrape, with no registration step."""
        stats.verdict("fail")
        stats.set_broker(False, spool_depth=9)
        samples = scrape(served)
        assert value(samples, "inspectd_verdicts_total", verdict="fail") == 2
        assert value(samples, "inspectd_broker_connected") == 0
        assert value(samples, "inspectd_spool_depth") == 9

    def test_stop_frees_the_port(self, stats: PipelineStats) -> None:
        """After stop() nothing listens on the port, and two servers can run in one process."""
        port, other = free_port(), free_port()
        stop = serve_metrics(MetricsConfig(port=port), stats)
        stop_other = serve_metrics(MetricsConfig(port=other), stats)
        scrape(port)
        stop()
        with pytest.raises(urllib.error.URLError):
            scrape(port)
        scrape(other)
        stop_other()

    def test_disabled(self, stats: PipelineStats) -> None:
        """With metrics disabled nothing is served and stop() is harmless."""
        port = free_port()
        stop = serve_metrics(MetricsConfig(enabled=False, port=port), stats)
        with pytest.raises(urllib.error.URLError):
            scrape(port)
        stop()


class TestMetricsDuringRun:
    """/metrics of a running daemon (run_daemon with a real broker and the tiny bundle)."""

    def test_scrape_running_daemon(self, broker: Broker, tmp_path: Path) -> None:
        """While frames flow, a scrape shows verdicts, the backend, a connected broker and per-stage latencies."""
        config = tiny_daemon_config(tmp_path, broker, [blob_frame(64, 64), blob_frame(64, 64, (8, 8, 10, 10))])
        config.metrics.port = free_port()
        stop = threading.Event()
        thread = threading.Thread(target=run_daemon, args=(config,), kwargs={"stop": stop}, daemon=True)
        thread.start()
        try:
            samples: dict[str, list[tuple[dict[str, str], float]]] = {}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    samples = scrape(config.metrics.port)
                except urllib.error.URLError:  # not listening yet
                    samples = {}
                if samples and value(samples, "inspectd_verdicts_total", verdict="fail") >= 2 and value(
                    samples, "inspectd_broker_connected"
                ):
                    break
                time.sleep(0.1)
            assert samples, "metrics server never answered"
            assert value(samples, "inspectd_verdicts_total", verdict="pass") >= 1
            assert value(samples, "inspectd_verdicts_total", verdict="fail") >= 2
            assert value(samples, "inspectd_frames_captured_total") >= 3
            assert value(samples, "inspectd_broker_connected") == 1
            assert [lab for lab, _ in samples["inspectd_backend_info"]][0]["backend"].startswith("onnxruntime")
            assert value(samples, "inspectd_stage_latency_seconds_count", stage="infer") >= 3
            assert value(samples, "inspectd_stage_latency_seconds_count", stage="end_to_end") >= 3
            assert "inspectd_spool_depth" in samples
            assert "inspectd_frames_skipped_total" in samples
            assert "inspectd_camera_reconnects_total" in samples
        finally:
            stop.set()
            thread.join(timeout=30)
        with pytest.raises(urllib.error.URLError):
            scrape(config.metrics.port)  # stopped with the daemon
