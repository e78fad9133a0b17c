"""Frame sources: image folder, video file, V4L2, RTSP/HTTP, GStreamer and GenICam cameras, behind one `Source`.

A source never raises for a bad frame: an unreadable, empty, 16-bit or wrongly shaped image becomes a `Frame` with
`image=None` and an `error` saying why, so the pipeline gives it an `error` verdict (a part is never passed
without an inspection). Live cameras reconnect by themselves and report each outage as an error frame.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

from edge.errors import SourceError

if TYPE_CHECKING:
    from edge.config import SourceConfig
    from edge.stats import PipelineStats


@dataclass(frozen=True)
class CameraStamp:
    """What a GenICam camera says about an exposure: its own frame id (block id) and timestamp."""

    frame_id: int
    timestamp_ns: int | None  # the camera's clock (PTP-synchronised when the camera is); None when not reported


@dataclass
class Frame:
    """One captured frame, or the reason there is none (`image is None`, `error` set)."""

    frame_id: int  # monotonic per source, never reused (also counts error frames)
    ts: float  # capture time, UNIX seconds
    mono: float  # capture time, time.monotonic()
    source: str  # camera name
    image: np.ndarray | None  # BGR uint8 (H, W, 3)
    error: str | None = None
    outage: bool = False  # an error frame that stands for a camera outage
    camera: CameraStamp | None = None  # GenICam cameras: the exposure this frame is


class Source(Protocol):
    """What the pipeline's capture stage drives."""

    name: str
    live: bool  # a camera that keeps running whether we read or not (frames may be skipped when behind)
    finished: bool  # a finite source (folder, video without loop) has no more frames

    @property
    def dropped(self) -> int:
        """Frames lost before anyone read them (a camera buffer overwritten), counted since the source opened."""
        ...

    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None when none came within `timeout` seconds (check `finished`)."""
        ...

    def error_frame(self, error: str) -> Frame:
        """A frame standing for one that could not be had (e.g. a trigger with no frame), numbered like the rest."""
        ...

    def close(self) -> None:
        """Release the camera or file handle."""
        ...


@runtime_checkable
class SoftwareTriggered(Protocol):
    """A source whose camera exposes on command (GenICam, `source.trigger = "software"`): one exposure per part."""

    def fire(self) -> Frame | None:
        """Trigger one exposure: None when fired (collect it with `exposure`).

        An error frame when it could not be fired (the camera is lost, or refused the command).
        """
        ...

    def exposure(self, timeout: float) -> Frame | None:
        """The exposure the last `fire` caused (or the outage report that ended it); None if not within `timeout`."""
        ...


class FrameFactory:
    """Numbers frames and checks their pixels, the same way for every source."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ids = itertools.count()

    def make(
        self, image: np.ndarray | None, *, error: str | None = None, outage: bool = False,
        camera: CameraStamp | None = None,
    ) -> Frame:
        """A Frame stamped now; `image` is checked and grey is expanded to BGR, anything else odd becomes an error."""
        if error is None:
            image, error = check_image(image)
        if error is not None:
            image = None
        return Frame(next(self._ids), time.time(), time.monotonic(), self.name, image, error, outage, camera)


def check_image(image: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """Return (BGR uint8 image, None), or (None, why it cannot be inspected).

    Grey (H, W) or (H, W, 1) frames from mono cameras are expanded to BGR; any other channel count, a non-8-bit
    dtype (16-bit PNGs, raw 12-bit sensors) or an empty frame is an error, never silently converted.
    """
    if image is None:
        return None, "frame could not be read or decoded"
    if not isinstance(image, np.ndarray):
        return None, f"frame is a {type(image).__name__}, expected a numpy array"
    if image.size == 0 or image.ndim < 2 or min(image.shape[:2]) == 0:
        return None, f"empty frame (shape {image.shape})"
    if image.dtype != np.uint8:
        bits = image.dtype.itemsize * 8
        return None, f"frame has {bits}-bit {image.dtype} pixels, expected 8-bit (uint8) BGR"
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), None
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else f"{image.ndim}-D"
        return None, f"frame has {channels} channels (shape {image.shape}), expected 3 (BGR) or 1 (grey)"
    return image, None


def open_source(config: SourceConfig, base_dir: Path | None = None, *, stats: PipelineStats | None = None) -> Source:
    """Open the source `config` describes; a relative folder/video `uri` is resolved against `base_dir`.

    Raises:
        SourceError: a folder or video file cannot be opened, or GStreamer is asked of an OpenCV without it.
            Live cameras (v4l2, rtsp, gstreamer, genicam) never raise for being unreachable: they retry forever.
        CameraConfigError: a GenICam camera found at start-up refuses a setting (exit 2).
        MissingExtraError: kind = "genicam" without its driver's packages (exit 2).
    """
    from edge.sources import files, live

    if config.kind == "genicam":
        from edge.sources.genicam import GenicamSource

        return GenicamSource(config, stats=stats)
    if config.kind in {"folder", "video"}:
        path = Path(config.uri).expanduser()
        if not path.is_absolute():
            path = (base_dir or Path.cwd()) / path
        if config.kind == "folder":
            return files.FolderSource(config, path)
        return files.VideoSource(config, path)
    return live.LiveSource(config, live.opener_for(config), stats=stats)


__all__ = [
    "CameraStamp", "Frame", "FrameFactory", "SoftwareTriggered", "Source", "SourceError", "check_image", "open_source",
]
