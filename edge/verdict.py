"""The one result type: a `Verdict` per frame (what the PLC sees).

Sinks that also need pixels (mask PNG topic, debug stream) get it wrapped in an `Inspection`, with the preprocess
`Geometry` that maps model pixels back to the frame.

Every frame gets exactly one verdict, numbered by a gap-free `seq`, so a subscriber can see a gap. `error` is a
verdict too: a part is never passed without an inspection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edge.preprocess import Geometry
from edge.sources import CameraStamp

VerdictKind = Literal["pass", "fail", "error"]
KINDS: tuple[VerdictKind, ...] = ("pass", "fail", "error")


@dataclass(frozen=True)
class Region:
    """A defect region in original-frame pixel coordinates."""

    bbox: tuple[int, int, int, int]  # x, y, w, h
    area_px: int
    max_score: float
    mean_score: float

    def __post_init__(self) -> None:
        if len(self.bbox) != 4 or self.bbox[2] < 0 or self.bbox[3] < 0:
            msg = f"Region.bbox must be [x, y, w>=0, h>=0], but got {list(self.bbox)}"
            raise ValueError(msg)


@dataclass(frozen=True)
class Verdict:
    """One judgement of one frame; serialised as the JSON on <prefix>/result (schema: edge/result.schema.json)."""

    seq: int
    frame_id: int
    ts: float  # capture time, UNIX seconds (UTC)
    outcome: VerdictKind  # published as the JSON key "verdict"
    score: float | None  # normalised: >= threshold means fail; None for error
    threshold: float
    latency_ms: float  # capture -> verdict
    model: dict[str, str]  # {"name": ..., "hash": ...}
    source: str = ""
    part_id: str | None = None
    regions: tuple[Region, ...] = ()
    error: str | None = None  # why, for outcome == "error"
    camera: CameraStamp | None = None  # GenICam: the camera's frame id and timestamp of the exposure
    warning: str | None = None  # a problem with the trigger (payload over a cap, part_id cut short); key only when set

    def __post_init__(self) -> None:
        if self.outcome not in KINDS:
            msg = f"Verdict.outcome must be one of {KINDS}, but got {self.outcome!r}"
            raise ValueError(msg)
        if self.outcome == "error" and not self.error:
            msg = "Verdict.error must say why when the outcome is 'error'"
            raise ValueError(msg)
        if self.seq < 0:
            msg = f"Verdict.seq must be >= 0, but got {self.seq}"
            raise ValueError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in schema order; built by hand because `dataclasses.asdict` deep-copies (hot path)."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "frame_id": self.frame_id,
            "ts": self.ts,
            "verdict": self.outcome,
            "score": self.score,
            "threshold": self.threshold,
            "latency_ms": self.latency_ms,
            "model": dict(self.model),
            "source": self.source,
            "part_id": self.part_id,
            "regions": [
                {"bbox": list(r.bbox), "area_px": r.area_px, "max_score": r.max_score, "mean_score": r.mean_score}
                for r in self.regions
            ],
            "error": self.error,
        }
        if self.camera is not None:  # only GenICam frames: other sources' payloads stay as they were
            out["camera"] = {"frame_id": self.camera.frame_id, "timestamp_ns": self.camera.timestamp_ns}
        if self.warning is not None:  # only a trigger with a problem: other payloads stay as they were
            out["warning"] = self.warning
        return out

    def to_json(self) -> str:
        """Compact JSON, as published on <prefix>/result."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass
class Inspection:
    """A verdict plus the pixels some sinks need. Arrays are owned by the inspection (copies, not backend buffers)."""

    verdict: Verdict
    frame: np.ndarray | None = None  # original BGR frame as captured
    anomaly_map: np.ndarray | None = None  # (h, w) float32 at model input size, normalised
    mask: np.ndarray | None = None  # (h, w) uint8 {0,1} at model input size
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    geometry: Geometry | None = None  # model -> frame pixels (ROI crop and resize); None: the whole frame, resized

    def frame_geometry(self) -> Geometry | None:
        """`geometry`, or for a mask without one the whole frame resized (None when there is no frame or mask)."""
        if self.geometry is not None or self.mask is None or self.frame is None or not self.frame.size:
            return self.geometry
        return Geometry.whole_frame(self.frame.shape, self.mask.shape)
