"""Where verdicts go: MQTT for the PLC (`mqtt.py`), ZeroMQ for the debug viewer (`zmq_debug.py`).

A sink takes `Inspection`s from the pipeline's last stage. `publish` must return quickly (it runs on the pipeline
thread; slow I/O belongs on the sink's own thread) and must never raise for a delivery problem: a broker outage is
the sink's business (spool, retry), not a reason to stop judging parts.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, runtime_checkable

from edge.verdict import Inspection


@runtime_checkable
class Sink(Protocol):
    """A destination for inspections; used as a context manager so `close()` always runs."""

    def publish(self, inspection: Inspection) -> None:
        """Hand one inspection over; returns without waiting for delivery."""
        ...

    def close(self) -> None:
        """Flush what can be flushed and release connections and files."""
        ...

    def __enter__(self) -> Sink: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
