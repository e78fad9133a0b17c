"""Pipeline statistics: one thread-safe object every stage writes and the stats topic, Prometheus, watchdog read.

Latency is kept twice on purpose: cumulative fixed-bucket histograms (what Prometheus wants, cheap forever) and a
window of recent samples for the p50/p95/p99 an operator reads on the stats topic (what is happening *now*).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from typing import Any

STAGES: tuple[str, ...] = ("capture", "preprocess", "infer", "postprocess", "publish", "end_to_end")
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNTERS: tuple[str, ...] = ("spool_write_failed", "spool_dropped", "no_subscribers", "verdicts_lost")
_WINDOW = 1024  # recent samples kept per stage for percentiles
_FPS_WINDOW_S = 10.0


class _Histogram:
    """Cumulative bucket counts (Prometheus semantics: counts[i] = samples <= BUCKETS[i]) plus a recent window."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # last = +Inf
        self.total = 0.0
        self.n = 0
        self.recent: deque[float] = deque(maxlen=_WINDOW)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1
        self.recent.append(seconds)

    def summary(self) -> dict[str, Any]:
        recent = sorted(self.recent)
        cumulative, running = [], 0
        for bound, count in zip((*BUCKETS, "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append([bound, running])
        return {
            "count": self.n,
            "sum_s": self.total,
            "p50_ms": _percentile(recent, 0.50),
            "p95_ms": _percentile(recent, 0.95),
            "p99_ms": _percentile(recent, 0.99),
            "buckets": cumulative,  # [[le_seconds or "+Inf", cumulative count], ...]
        }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds; None without samples."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values) + 0.5) - 1))
    return round(sorted_values[index] * 1000.0, 3)


class PipelineStats:
    """Counters, gauges, latency histograms and stage heartbeats of one running pipeline (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.frames_captured = 0
        self.frames_skipped = 0
        self.verdicts: dict[str, int] = {"pass": 0, "fail": 0, "error": 0}
        self.last_verdict: str | None = None
        self.camera_reconnects = 0
        self.camera_outages = 0
        self.frames_dropped_camera = 0
        self.queue_depths: dict[str, int] = {}
        self.broker_connected = False
        self.spool_depth = 0
        # MQTT delivery counters: verdicts the spool could not store (and housekeeping writes that failed), verdicts
        # the spool dropped (cap, damage), verdicts nobody subscribed to, verdicts lost for good
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.backend = ""
        self._hist = {stage: _Histogram() for stage in STAGES}
        self._beats: dict[str, float] = {}
        self._verdict_times: deque[float] = deque(maxlen=4096)

    # counters ---------------------------------------------------------------------------------------------------
    def frame_captured(self) -> None:
        """Count one frame read from the source (error frames included)."""
        with self._lock:
            self.frames_captured += 1

    def frame_skipped(self, n: int = 1) -> None:
        """Count `n` frames not inspected because the pipeline was behind (continuous mode)."""
        with self._lock:
            self.frames_skipped += n

    def verdict(self, kind: str) -> None:
        """Count one published verdict of `kind`."""
        now = time.monotonic()
        with self._lock:
            self.verdicts[kind] = self.verdicts.get(kind, 0) + 1
            self._verdict_times.append(now)
            self.last_verdict = kind

    def camera_outage(self) -> None:
        """Count one camera outage (reported once, however many retries)."""
        with self._lock:
            self.camera_outages += 1

    def camera_dropped(self, n: int = 1) -> None:
        """Count `n` frames the camera or its link lost: incomplete buffers and gaps in the camera's frame ids."""
        with self._lock:
            self.frames_dropped_camera += n

    def camera_reconnect(self) -> None:
        """Count one successful reconnect after an outage."""
        with self._lock:
            self.camera_reconnects += 1

    # gauges -----------------------------------------------------------------------------------------------------
    def set_queue_depth(self, name: str, depth: int) -> None:
        """Set the current length of the queue after stage `name`."""
        with self._lock:
            self.queue_depths[name] = depth

    def count(self, name: str, n: int = 1) -> None:
        """Add `n` to one of COUNTERS."""
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def set_counter(self, name: str, value: int) -> None:
        """Set one of COUNTERS to a total kept elsewhere (the spool's own counts)."""
        with self._lock:
            self.counters[name] = value

    def set_broker(self, connected: bool, spool_depth: int | None = None) -> None:
        """Set the broker gauges (called by the MQTT sink)."""
        with self._lock:
            self.broker_connected = connected
            if spool_depth is not None:
                self.spool_depth = spool_depth

    # latency and heartbeats -------------------------------------------------------------------------------------
    def observe(self, stage: str, seconds: float) -> None:
        """Record one latency sample of `stage` (one of STAGES)."""
        with self._lock:
            self._hist[stage].observe(seconds)

    def beat(self, stage: str, at: float | None = None) -> None:
        """Mark `stage` alive now; each stage loop calls this every iteration, idle or not.

        `at` (a time.monotonic() value) backdates the beat: how tests make a stage look hung without waiting.
        """
        now = time.monotonic() if at is None else at
        with self._lock:
            self._beats[stage] = now

    def last_beats(self) -> dict[str, float]:
        """Monotonic time of each stage's last beat."""
        with self._lock:
            return dict(self._beats)

    def histogram(self, stage: str) -> tuple[tuple[float, ...], list[int], float, int]:
        """(bucket bounds, per-bucket counts incl. +Inf last, sum of seconds, sample count) for Prometheus."""
        with self._lock:
            h = self._hist[stage]
            return BUCKETS, list(h.counts), h.total, h.n

    def fps(self) -> float:
        """Verdicts per second over the last few seconds."""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._verdict_times if now - t <= _FPS_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], 1e-6)
        return round(len(recent) / span, 3)

    def snapshot(self) -> dict[str, Any]:
        """Everything above as JSON-able data, plus fps and latency percentiles per stage."""
        fps = self.fps()
        with self._lock:
            return {
                "uptime_s": round(time.monotonic() - self.started, 3),
                "fps": fps,
                "frames_captured": self.frames_captured,
                "frames_skipped": self.frames_skipped,
                "verdicts": dict(self.verdicts),
                "last_verdict": self.last_verdict,
                "camera_reconnects": self.camera_reconnects,
                "camera_outages": self.camera_outages,
                "frames_dropped_camera": self.frames_dropped_camera,
                "queue_depths": dict(self.queue_depths),
                "broker_connected": self.broker_connected,
                "spool_depth": self.spool_depth,
                **self.counters,
                "backend": self.backend,
                "latency": {stage: h.summary() for stage, h in self._hist.items()},
            }
