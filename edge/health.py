"""Prometheus metrics of the running pipeline, read from `PipelineStats` at scrape time.

A custom collector rather than prometheus-client's global metric objects: the pipeline keeps one thread-safe stats
object (also published on the MQTT stats topic and read by the watchdog), and a scrape just renders it. Nothing on
the pipeline's hot path touches prometheus-client. Each `serve_metrics` call gets its own registry, so tests and
`inspectd bench` can start several daemons in one process without duplicate-registration errors.

The server binds loopback by default (`[metrics] host`); expose it deliberately.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from edge.errors import ConfigError
from edge.log import get_logger
from edge.stats import STAGES

if TYPE_CHECKING:
    from edge.config import MetricsConfig
    from edge.stats import PipelineStats

log = get_logger(__name__)

PREFIX = "inspectd"
_DELIVERY_COUNTERS = {
    "spool_write_failed": "Spool writes that failed (disk full, I/O error); verdicts then went straight to the broker.",
    "spool_dropped": "Spooled verdicts dropped unsent: the spool cap during a long outage, or damage on disk.",
    "no_subscribers": "Verdicts the broker acknowledged with reason 0x10: accepted, but nobody subscribed.",
    "verdicts_lost": "Verdicts neither kept nor delivered (the daemon exits non-zero after one).",
}


class PipelineCollector(Collector):
    """Renders one `PipelineStats` as Prometheus metric families on every scrape."""

    def __init__(self, stats: PipelineStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family from one consistent `snapshot()` plus the per-stage histograms."""
        snap: dict[str, Any] = self.stats.snapshot()
        yield _counter("frames_captured", "Frames read from the source.", snap.get("frames_captured", 0))
        yield _counter(
            "frames_skipped",
            "Frames not inspected because the pipeline was behind a live source; by design they get no verdict and no "
            "seq (they show as frame_id gaps).",
            snap.get("frames_skipped", 0),
        )
        verdicts = CounterMetricFamily(f"{PREFIX}_verdicts", "Verdicts published, by kind.", labels=["verdict"])
        for kind in ("pass", "fail", "error"):
            verdicts.add_metric([kind], (snap.get("verdicts") or {}).get(kind, 0))
        yield verdicts
        yield _counter("camera_reconnects", "Successful camera reconnects.", snap.get("camera_reconnects", 0))
        yield _counter("camera_outages", "Camera outages (no frame within source.stall_timeout_s).",
                       snap.get("camera_outages", 0))
        yield _counter("frames_dropped_camera", "Frames the camera or its link lost (incomplete buffers, gaps in the "
                       "camera's frame ids).", snap.get("frames_dropped_camera", 0))
        yield GaugeMetricFamily(
            f"{PREFIX}_fps", "Verdicts per second over the last seconds.", value=snap.get("fps", 0.0)
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_connected", "1 while the MQTT broker connection is up.",
            value=1.0 if snap.get("broker_connected") else 0.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_spool_depth",
            "Verdicts waiting in the store-and-forward spool.",
            value=snap.get("spool_depth", 0),
        )
        for name, doc in _DELIVERY_COUNTERS.items():
            yield _counter(name, doc, snap.get(name, 0))
        queues = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Items waiting in each stage queue.", labels=["queue"])
        for name, depth in sorted((snap.get("queue_depths") or {}).items()):
            queues.add_metric([name], depth)
        yield queues
        backend = InfoMetricFamily(f"{PREFIX}_backend", "Inference backend in use.")
        backend.add_metric([], {"backend": str(snap.get("backend") or "")})
        yield backend
        yield self._latency()

    def _latency(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            f"{PREFIX}_stage_latency_seconds",
            "Per-stage latency; end_to_end is capture to verdict handed to the sinks.",
            labels=["stage"],
        )
        for stage in STAGES:
            bounds, counts, total, _n = self.stats.histogram(stage)
            cumulative, running = [], 0
            for bound, count in zip((*(repr(float(b)) for b in bounds), "+Inf"), counts, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            family.add_metric([stage], cumulative, sum_value=total)
        return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def serve_metrics(config: MetricsConfig, stats: PipelineStats) -> Callable[[], None]:
    """Start the `/metrics` HTTP server on `config.host:config.port` when enabled; return a function that stops it.

    The server runs on its own daemon thread; stopping it closes the listening socket so the port is free again.

    Raises:
        ConfigError: the address cannot be bound (port in use, address not on this host).
    """
    if not config.enabled:
        return lambda: None
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PipelineCollector(stats))
    ProcessCollector(namespace=PREFIX, registry=registry)  # RSS and CPU seconds: memory must stay flat
    try:
        server, thread = start_http_server(config.port, addr=config.host, registry=registry)
    except OSError as exc:
        msg = (
            f"metrics.port {config.port} on metrics.host {config.host} cannot be used ({exc.strerror or exc}): "
            "another process holds it (a second inspectd?); choose another port or set metrics.enabled = false"
        )
        raise ConfigError(msg) from None
    url = f"http://{_netloc(config.host, server.server_address[1])}/metrics"
    if not _is_loopback(config.host):
        log.warning("metrics_not_loopback", url=url, note="the metrics endpoint is reachable from the network, "
                    "without authentication; bind metrics.host to 127.0.0.1 unless that is meant")
    log.info("metrics_serving", url=url)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
