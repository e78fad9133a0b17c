"""File sources: an image folder (sorted, glob, loop) and a video file (loop), optionally paced at `fps`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import imagesize
import numpy as np

from edge.errors import SourceError
from edge.log import get_logger
from edge.sources import Frame, FrameFactory

if TYPE_CHECKING:
    from edge.config import SourceConfig

log = get_logger(__name__)


class _Pacer:
    """Hands out frame deadlines at `fps` (0 = no pacing) so `read` can wait without blocking past its timeout."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.due = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """True when the next frame is due (after sleeping at most `timeout`); False if still early."""
        if not self.period:
            return True
        delay = self.due - time.monotonic()
        if delay > timeout:
            time.sleep(max(timeout, 0.0))
            return False
        if delay > 0:
            time.sleep(delay)
        self.due = max(self.due + self.period, time.monotonic() - self.period)
        return True


class FolderSource:
    """Images of a folder in sorted file-name order; every file yields a frame, unreadable ones an error frame."""

    dropped = 0  # files wait to be read: none is ever lost (frames the pipeline skips are counted there)

    def __init__(self, config: SourceConfig, path: Path) -> None:
        if not path.is_dir():
            msg = f"source.uri: image folder {path} does not exist (source.kind = 'folder')"
            raise SourceError(msg)
        self.files = sorted(p for p in path.glob(config.glob) if p.is_file())
        if not self.files:
            msg = f"source.uri: no files matching {config.glob!r} in {path}"
            raise SourceError(msg)
        self.name = config.name
        self.live = config.fps > 0  # paced like a camera: the pipeline may skip (and count) frames when behind
        self.finished = False
        self.loop = config.loop
        self.max_pixels = config.max_pixels
        self._factory = FrameFactory(config.name)
        self._pacer = _Pacer(config.fps)
        self._next = 0
        log.info("source_opened", kind="folder", path=str(path), files=len(self.files), loop=self.loop)

    def read(self, timeout: float) -> Frame | None:
        """The next file's frame, None while pacing or at the end (then `finished`)."""
        if self.finished or not self._pacer.wait(timeout):
            return None
        if self._next >= len(self.files):
            if not self.loop:
                self.finished = True
                return None
            self._next = 0
        path = self.files[self._next]
        self._next += 1
        image, why = _imread(path, self.max_pixels)
        if image is None:
            return self._factory.make(None, error=why)
        frame = self._factory.make(image)
        if frame.error:
            frame.error = f"{path.name}: {frame.error}"
        return frame

    def error_frame(self, error: str) -> Frame:
        """An error frame numbered in this source's frame_id sequence."""
        return self._factory.make(None, error=error)

    def close(self) -> None:
        """Stop; `read` returns None from now on."""
        self.finished = True


def _imread(path: Path, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, why): decoded as stored (IMREAD_UNCHANGED) so 16-bit or 4-channel files are reported.

    The pixel count is read from the header first: a tiny file may claim 100000 x 100000 pixels (OpenCV then raises,
    or a large-but-allowed one takes gigabytes), so anything over `source.max_pixels` is refused before decoding.
    """
    try:
        width, height = imagesize.get(path)
    except Exception:  # noqa: BLE001 - an unreadable header is for the decoder to judge
        width = height = -1
    if width > 0 and height > 0 and width * height > max_pixels:
        return None, (f"image file {path.name} is {width}x{height} = {width * height} pixels, over source.max_pixels "
                      f"({max_pixels}): not decoded")
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        return None, f"cannot read image file {path.name}: {exc.strerror or exc}"
    if data.size == 0:
        return None, f"cannot read image file {path.name} (empty file)"
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. a header over OpenCV's own pixel limit, a corrupt stream
        return None, f"cannot read image file {path.name}: OpenCV refused it ({str(exc).strip().splitlines()[-1]})"
    if image is None:
        return None, f"cannot read image file {path.name} (empty, truncated or not an image)"
    return image, None


class VideoSource:
    """Frames of a video file through OpenCV; with `loop` it starts again at the end."""

    dropped = 0  # a file waits to be read: no frame is ever lost (frames the pipeline skips are counted there)

    def __init__(self, config: SourceConfig, path: Path) -> None:
        self.path = path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            msg = f"source.uri: cannot open video file {path} (missing, or a codec OpenCV's FFmpeg cannot decode)"
            raise SourceError(msg)
        self.name = config.name
        self.live = config.fps > 0
        self.finished = False
        self.loop = config.loop
        self._factory = FrameFactory(config.name)
        self._pacer = _Pacer(config.fps)
        self._frames_since_rewind = 0
        log.info("source_opened", kind="video", path=str(path), loop=self.loop)

    def read(self, timeout: float) -> Frame | None:
        """The next file's frame, None while pacing or at the end (then `finished`)."""
        if self.finished or not self._pacer.wait(timeout):
            return None
        ok, image = self.cap.read()
        if not ok and self.loop and self._frames_since_rewind > 0:
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._frames_since_rewind = 0
            ok, image = self.cap.read()
        if not ok:
            self.finished = True
            return None
        self._frames_since_rewind += 1
        return self._factory.make(image)

    def error_frame(self, error: str) -> Frame:
        """An error frame numbered in this source's frame_id sequence."""
        return self._factory.make(None, error=error)

    def close(self) -> None:
        """Stop; `read` returns None from now on."""
        self.finished = True
        self.cap.release()
