"""Where verdicts go: MQTT for the PLC (`edge/mqtt/results.py`), ZeroMQ for the debug viewer (`zmq_debug.py`).

A sink takes `Inspection`s from the pipeline's last stage. `publish` must return quickly (it runs on the pipeline
thread; slow I/O belongs on the sink's own thread) and must never raise for a delivery problem: a broker outage is
the sink's business (spool, retry), not a reason to stop judging parts. The one exception is `VerdictLostError`: a
sink that can neither keep nor deliver a verdict raises it, and the pipeline stops admitting frames (the daemon then
exits non-zero). When `publish` returns, a delivery-tracking sink holds the verdict durably, so the pipeline may
acknowledge the part's trigger. The daemon drives every sink the same way:
periodic `publish_stats`, `wait_delivered` within the shutdown budget, then `close(deadline)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from edge.verdict import Inspection


@runtime_checkable
class Sink(Protocol):
    """A destination for inspections; used as a context manager so `close()` always runs."""

    def publish(self, inspection: Inspection) -> None:
        """Hand one inspection over; returns without waiting for delivery."""
        ...

    def publish_stats(self, snapshot: Mapping[str, Any]) -> None:
        """Pass on a pipeline statistics snapshot (sent every `mqtt.stats_interval_s`); ignored without a channel."""
        ...

    def wait_delivered(self, timeout: float) -> bool:
        """Wait up to `timeout` s until everything published was delivered; True at once if delivery is not tracked."""
        ...

    def close(self, deadline: float = math.inf) -> None:
        """Flush what can be flushed by `deadline` (time.monotonic()) and release connections and files."""
        ...

    def __enter__(self) -> Sink: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
