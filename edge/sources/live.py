"""Live cameras (V4L2, RTSP/HTTP, GStreamer): a reader thread per connection, reconnecting forever.

A camera can fail in two ways: `read()` returns False (unplugged, stream ended), or it blocks (stall). The first
is seen by the reader; the second only from outside, so `read()` watches a deadline and, when no frame came for
`stall_timeout_s`, abandons the stuck reader (its blocking call may never return, and releasing a capture another
thread is inside is unsafe) and starts a fresh one. Each outage is counted, logged and delivered once as an error
frame, so the verdict stream shows it; retries back off exponentially from `reconnect_min_s` to `reconnect_max_s`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

import cv2

from edge.errors import SourceError
from edge.log import get_logger
from edge.sources import Frame, FrameFactory

if TYPE_CHECKING:
    from edge.config import SourceConfig
    from edge.stats import PipelineStats

log = get_logger(__name__)
_BUFFER = 2  # frames kept for a slow reader; older ones are dropped (and counted) as a live camera does
_CLOSE_WAIT_S = 5.0  # longest close() waits for readers to leave OpenCV


def redact(uri: str) -> str:
    """`rtsp://user:secret@cam/stream` -> `rtsp://***@cam/stream`: camera passwords stay out of logs and verdicts."""
    return re.sub(r"//[^/@\s]*@", "//***@", uri)


def with_credentials(config: SourceConfig) -> str:
    """`source.uri` with `source.username` and the password (env or credential, never the TOML) put in, if set."""
    if not config.username or "://" not in config.uri:
        return config.uri
    scheme, rest = config.uri.split("://", 1)
    password = config.password.get_secret_value() if config.password is not None else ""
    user = quote(config.username, safe="") + (":" + quote(password, safe="") if password else "")
    return f"{scheme}://{user}@{rest.split('@', 1)[-1]}"


def gstreamer_available() -> bool:
    """Whether this OpenCV build has the GStreamer video I/O backend."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def opener_for(config: SourceConfig) -> Callable[[], cv2.VideoCapture]:
    """A function that opens one connection to the camera `config` names.

    Raises:
        SourceError: kind is gstreamer but this OpenCV was built without GStreamer.
    """
    uri = with_credentials(config)
    if config.kind == "v4l2":
        device: int | str = int(uri) if uri.isdigit() else uri
        return lambda: cv2.VideoCapture(device, cv2.CAP_V4L2)
    if config.kind == "rtsp":
        # TCP: UDP RTSP loses packets on busy factory networks and shows up as smeared frames, not errors.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        ms = int(config.stall_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return lambda: cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
    if config.kind == "gstreamer":
        if not gstreamer_available():
            msg = (
                "source.kind = 'gstreamer' but this OpenCV was built without GStreamer (the pip opencv-python wheel "
                "has none); use JetPack's or the system OpenCV (python3-opencv) built with GStreamer, "
                "or source.kind = 'rtsp' / 'v4l2'"
            )
            raise SourceError(msg)
        return lambda: cv2.VideoCapture(uri, cv2.CAP_GSTREAMER)
    msg = f"source.kind {config.kind!r} is not a live camera kind"
    raise SourceError(msg)


class LiveSource:
    """A camera that runs whether we read or not; reconnects with exponential backoff and never gives up."""

    live = True

    def __init__(
        self, config: SourceConfig, opener: Callable[[], cv2.VideoCapture], *, stats: PipelineStats | None = None
    ) -> None:
        self.name = config.name
        self.finished = False
        self.dropped = 0  # frames overwritten before anyone read them
        self.describe = f"{config.kind} {redact(config.uri)}"
        self._config = config
        self._opener = opener
        self._stats = stats
        self._factory = FrameFactory(config.name)
        self._cond = threading.Condition()
        self._queue: deque[Frame] = deque()  # frames and outage reports in capture order; see _deliver
        self._closed = threading.Event()
        self._gen = 0
        self._in_outage = False
        self._expect_by = 0.0  # monotonic deadline for the reader's next sign of life
        self._readers: list[threading.Thread] = []
        with self._cond:
            self._start_reader_locked()

    # reader side ------------------------------------------------------------------------------------------------
    def _start_reader_locked(self) -> None:
        self._gen += 1
        self._expect_by = time.monotonic() + 2 * self._config.stall_timeout_s  # opening may take a timeout itself
        name = f"camera-{self.name}-{self._gen}"
        thread = threading.Thread(target=self._run, args=(self._gen,), name=name, daemon=True)
        thread.start()
        self._readers = [t for t in self._readers if t.is_alive()] + [thread]

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._closed.is_set()

    def _run(self, gen: int) -> None:
        delay = self._config.reconnect_min_s
        while self._current(gen):
            try:
                cap = self._opener()
            except Exception as exc:  # noqa: BLE001 - any opener failure is an outage, retried
                cap, reason = None, f"cannot open {self.describe}: {exc}"
            else:
                reason = f"cannot open {self.describe}"
            if cap is not None and cap.isOpened():
                log.info("camera_opened", camera=self.name, source=self.describe)
                failure, delivered = self._read_until_failure(gen, cap)
                if failure is None:
                    return  # abandoned or closed
                reason = failure
                if delivered:
                    delay = self._config.reconnect_min_s  # it worked for a while: start the backoff again
            elif cap is not None:
                cap.release()
            if not self._lost(gen, reason, delay) or self._closed.wait(delay):
                return
            delay = min(delay * 2, self._config.reconnect_max_s)

    def _read_until_failure(self, gen: int, cap: cv2.VideoCapture) -> tuple[str | None, bool]:
        """Read frames until a read fails (why, any frames?) or this reader is abandoned/closed (None, ...)."""
        delivered = False
        try:
            while self._current(gen):
                ok, image = cap.read()
                if not self._current(gen):
                    return None, delivered
                if not ok:
                    return f"no frame from {self.describe} (stream ended, camera unplugged or read timeout)", delivered
                self._deliver(gen, image)
                delivered = True
            return None, delivered
        finally:
            cap.release()

    def _deliver(self, gen: int, image: object) -> None:
        frame = self._factory.make(image)  # type: ignore[arg-type]
        with self._cond:
            if gen != self._gen:
                return
            self._expect_by = frame.mono + self._config.stall_timeout_s
            if self._in_outage:
                self._in_outage = False
                if self._stats is not None:
                    self._stats.camera_reconnect()
                log.info("camera_reconnected", camera=self.name, source=self.describe)
            images = [f for f in self._queue if not f.outage]
            if len(images) >= _BUFFER:  # drop the oldest image, never an outage report
                self._queue.remove(images[0])
                self.dropped += 1
            self._queue.append(frame)
            self._cond.notify_all()

    def _lost(self, gen: int, reason: str, retry_in: float) -> bool:
        """Record an outage (once per outage: one error frame, one count); False if this reader is stale."""
        with self._cond:
            if gen != self._gen:
                return False
            self._expect_by = time.monotonic() + retry_in + 2 * self._config.stall_timeout_s
            self._outage_locked(reason, retry_in)
            return True

    def _outage_locked(self, reason: str, retry_in: float) -> None:
        if self._in_outage:
            log.debug("camera_retry", camera=self.name, reason=reason, retry_in_s=retry_in)
            return
        self._in_outage = True
        if self._stats is not None:
            self._stats.camera_outage()
        log.warning("camera_lost", camera=self.name, reason=reason, retry_in_s=retry_in)
        error = f"camera {self.name} lost: {reason}; reconnecting"
        self._queue.append(self._factory.make(None, error=error, outage=True))
        self._cond.notify_all()

    # consumer side ----------------------------------------------------------------------------------------------
    def read(self, timeout: float) -> Frame | None:
        """The next outage report or frame, oldest first; None if nothing came within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._queue:
                    return self._queue.popleft()
                now = time.monotonic()
                if now > self._expect_by and not self._closed.is_set():
                    stall = self._config.stall_timeout_s
                    self._outage_locked(f"no frame from {self.describe} for {stall:g} s (stalled)", 0.0)
                    self._start_reader_locked()  # the stuck reader is abandoned; it exits when its call returns
                    continue
                if now >= deadline:
                    return None
                self._cond.wait(min(deadline, self._expect_by) - now + 0.001)

    def error_frame(self, error: str) -> Frame:
        """An error frame numbered in this source's frame_id sequence."""
        return self._factory.make(None, error=error)

    def close(self) -> None:
        """Stop every reader and wait for them to leave OpenCV, at most one read timeout.

        A reader still inside a capture call when the interpreter exits aborts the process when the call returns
        (cv2 retakes the GIL inside a C++ frame: "FATAL: exception not rethrown", SIGABRT after a clean stop). A
        reader stuck longer than that (at most _CLOSE_WAIT_S) is left behind.
        """
        self._closed.set()
        self.finished = True
        with self._cond:
            self._gen += 1
            self._cond.notify_all()
            readers = list(self._readers)
        deadline = time.monotonic() + min(self._config.stall_timeout_s + 1.0, _CLOSE_WAIT_S)
        for thread in readers:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
