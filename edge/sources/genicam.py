"""GenICam cameras (`source.kind = "genicam"`): GigE Vision / USB3 Vision through Aravis, GenTL through harvesters.

Both drivers sit behind one small interface: a `Driver` opens a `Connection`, whose `NodeMap` is the camera's
features.

What the source guarantees, whatever the driver:

- **Configured as the config says, or not at all.** At connect every setting is checked against the camera's own
  range and written (`features.apply_settings`), then read back into the log (`camera_configured`). At start-up a
  setting the camera refuses is a CameraConfigError (exit 2); a camera that only appears later and refuses it is an
  outage whose reason says so, retried like any other.
- **Acquisition that tells the truth.** A reader thread keeps the camera's pool of `source.buffers` buffers queued,
  copying each filled one out at once, so the pool never runs dry because inference is slow. Incomplete buffers
  (lost packets) and gaps in the camera's frame ids are counted as `frames_dropped_camera` and logged; the camera's
  frame id and timestamp travel with the frame into the verdict (`camera`).
- **Outages.** A camera that is unplugged, powered off, loses its control channel, or (free-running) sends nothing
  for `source.stall_timeout_s` is one outage: one error frame, counted, logged; the source reconnects forever with
  the `source.reconnect_min_s` .. `reconnect_max_s` backoff, also when the camera was not there at start.
- **Triggers** (`source.trigger`): "free" runs continuously (the newest frames win when inspection is behind, like
  any live camera); "software" gives one exposure per `fire()`, which executes TriggerSoftware, collected with
  `exposure()`: exactly the exposure that trigger caused; "hardware" makes every exposure a part, never skipped: an
  exposure lost on the way becomes an error frame in its place, so the pairing with part ids (edge/pairing.py)
  stays in step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.errors import CameraConfigError, MissingExtraError, SourceError
from edge.log import get_logger
from edge.sources import CameraStamp, Frame, FrameFactory, pixels
from edge.sources.features import NodeMap, Value, apply_settings

if TYPE_CHECKING:
    from edge.config import SourceConfig
    from edge.stats import PipelineStats

log = get_logger(__name__)
_GRAB_S = 0.1  # longest the reader waits for a buffer before checking for stalls, flushes and close
_BUFFER = 2  # free-running: frames kept for a slow reader (older ones are skipped and counted, as live.py does)
_MAX_LOST_FRAMES = 1000  # hardware trigger: most error frames one frame-id gap turns into
_LOG_EVERY_S = 10.0
_FLUSH_WAIT_S = 2.0  # longest a software trigger waits for acquisition to restart after a missed one
UNKNOWN_ID = -1  # an incomplete buffer whose frame id the driver could not read (harvesters discards them)


class CameraNotFound(SourceError):
    """No camera matches source.uri (yet): retried with backoff."""


@dataclass(frozen=True)
class CameraInfo:
    """What discovery says about one camera."""

    driver: str
    device_id: str
    vendor: str = ""
    model: str = ""
    serial: str = ""
    user_id: str = ""
    address: str = ""  # IP address (GigE Vision); "" when the transport has none
    protocol: str = ""

    def describe(self) -> str:
        """`Vendor Model (serial S, address)` for logs and messages."""
        where = ", ".join(p for p in (f"serial {self.serial}" if self.serial else "", self.address or self.device_id)
                          if p)
        return f"{self.vendor} {self.model} ({where})".strip()

    def matches(self, uri: str) -> bool:
        """Whether `uri` names this camera: empty (the first one), device id, serial number, user id or address."""
        return not uri or uri in {self.device_id, self.serial, self.user_id, self.address}


@dataclass
class Exposure:
    """One buffer from the camera, pixels copied out of the pool; `error` when it cannot be used (incomplete)."""

    camera_frame_id: int
    timestamp_ns: int | None  # the camera's clock; None when the transport does not report one
    received: float  # time.monotonic() when the buffer arrived
    received_ts: float  # time.time() of the same moment
    data: np.ndarray | None = None
    width: int = 0
    height: int = 0
    pixel_format: str = ""
    stride: int | None = None
    error: str | None = None


class Connection(Protocol):
    """One open, controlled camera."""

    info: CameraInfo
    short_frame_ids: bool  # GigE Vision 1.x block ids: 16 bits, 65535 wraps to 1
    lost: str | None  # set (possibly from the driver's own thread) once the camera is known to be gone

    @property
    def nodes(self) -> NodeMap:
        """The camera's features."""
        ...

    def negotiate_packet_size(self) -> int | None:
        """GigE: find the largest packet size the network carries and set it; None for other transports."""
        ...

    def start(self, buffers: int) -> None:
        """Allocate a pool of `buffers` buffers and start acquisition."""
        ...

    def grab(self, timeout: float) -> Exposure | None:
        """The next buffer (complete or not), or None when none came within `timeout` seconds."""
        ...

    def trigger(self) -> None:
        """Execute TriggerSoftware."""
        ...

    def stop(self) -> None:
        """Stop acquisition and free the pool (buffers not yet grabbed are discarded)."""
        ...

    def close(self) -> None:
        """Stop, and release the camera (GigE: give up the control channel so another process may take it)."""
        ...


class Driver(Protocol):
    """Finds and opens cameras of one kind of transport layer."""

    name: str

    def discover(self) -> list[CameraInfo]:
        """Every camera this driver can see now."""
        ...

    def open(self, uri: str) -> Connection:
        """Open the camera `uri` names (see CameraInfo.matches).

        Raises:
            CameraNotFound: no such camera now.
        """
        ...


def load_driver(config: SourceConfig) -> Driver:
    """The driver `source.driver` names.

    Raises:
        MissingExtraError: its Python or system packages are not installed (exit 2, with the install command).
        ConfigError: harvesters without any GenTL producer (.cti) to load.
    """
    if config.driver == "aravis":
        try:
            from edge.sources.aravis import AravisDriver
        except (ImportError, ValueError) as exc:  # gi.require_version raises ValueError for a missing typelib
            msg = (
                f"source.driver = 'aravis' needs PyGObject and libaravis 0.8 ({exc}): "
                "apt-get install gir1.2-aravis-0.8 and pip install 'inspectd[genicam]' (see README, Industrial cameras)"
            )
            raise MissingExtraError(msg) from exc
        return AravisDriver(packet_socket=config.packet_socket)
    try:
        from edge.sources.gentl import GenTLDriver
    except ImportError as exc:
        msg = f"source.driver = 'harvesters' needs harvesters and genicam ({exc}): pip install 'inspectd[genicam]'"
        raise MissingExtraError(msg) from exc
    return GenTLDriver(config.cti)


def camera_formats(driver: Driver, info: CameraInfo) -> list[str] | str:
    """The pixel formats a camera offers (opening it briefly), or why it could not be opened (e.g. in use)."""
    try:
        conn = driver.open(info.device_id)
    except Exception as exc:  # noqa: BLE001 - for the check report: say why, don't crash
        return f"cannot open: {exc}"
    try:
        return conn.nodes.entries("PixelFormat") if conn.nodes.kind("PixelFormat") else []
    finally:
        conn.close()


class FrameIds:
    """Counts the exposures missing between consecutive camera frame ids."""

    def __init__(self) -> None:
        self.last: int | None = None

    def reset(self) -> None:
        """A new connection: the camera may have restarted its count."""
        self.last = None

    def missing_before(self, frame_id: int, *, short: bool) -> int:
        """How many ids were skipped between the previous buffer and this one (0 for a repeat or a restart)."""
        last, self.last = self.last, frame_id
        if last is None:
            return 0
        if short and frame_id <= 0xFFFF and last <= 0xFFFF:
            delta, limit = (frame_id - last) % 0xFFFF, 0x8000  # GigE Vision 1.x: ids 1..65535, then 1 again
        else:
            delta, limit = frame_id - last, 1 << 32
        return delta - 1 if 0 < delta < limit else 0


class GenicamSource:
    """A GenICam camera as a `Source`; see the module docstring for what it guarantees.

    Raises:
        CameraConfigError: the camera is there at start-up and refuses a setting (exit 2).
        MissingExtraError: the driver's packages are missing.
    """

    def __init__(self, config: SourceConfig, *, stats: PipelineStats | None = None,
                 driver: Driver | None = None) -> None:
        self.name = config.name
        self.finished = False
        self.dropped = 0  # free-running frames overwritten before the pipeline read them (it counts them skipped)
        self.trigger = config.trigger
        self.live = config.trigger == "free"
        self.describe = f"genicam {config.driver} {config.uri or '(first camera found)'}"
        self.info: CameraInfo | None = None
        self.settings: dict[str, Value] = {}  # what the camera read back at the last connect
        self._config = config
        self._stats = stats
        self._driver = driver or load_driver(config)
        self._factory = FrameFactory(config.name)
        self._cond = threading.Condition()
        self._queue: deque[Exposure | Frame] = deque()  # exposures and outage reports, in arrival order
        self._closed = threading.Event()
        self._conn: Connection | None = None
        self._conn_lock = threading.Lock()  # a connection is never closed while a trigger is executed on it
        self._in_outage = False
        self._reason = ""
        self._ids = FrameIds()
        self._unknown = 0  # incomplete buffers without a frame id since the last known id
        self._flush = threading.Event()  # a software trigger went unanswered: restart acquisition before the next
        self._awaiting = False  # fire() was called and its exposure has not been collected yet
        self._fired_at = 0.0
        self._lost_unlogged: dict[str, int] = {}
        self._lost_logged_at = 0.0
        conn: Connection | None = None
        try:
            conn = self._connect()
        except CameraConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - not there yet (or unreachable): an outage, retried
            self._outage(f"cannot open {self.describe}: {exc}", config.reconnect_min_s)
        self._thread = threading.Thread(target=self._run, args=(conn,), name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    # connection -------------------------------------------------------------------------------------------------
    def _connect(self) -> Connection:
        conn = self._driver.open(self._config.uri)
        try:
            packet_size = None if self._config.packet_size else conn.negotiate_packet_size()
            settings = apply_settings(conn.nodes, self._config, conn.info.describe())
            conn.start(self._config.buffers)
        except BaseException:
            conn.close()
            raise
        self.info, self.settings = conn.info, settings
        log.info("camera_configured", camera=self.name, device=conn.info.describe(), driver=self._driver.name,
                 trigger=self.trigger, buffers=self._config.buffers, negotiated_packet_size=packet_size,
                 settings=settings)
        return conn

    def _run(self, conn: Connection | None) -> None:
        cfg = self._config
        delay = cfg.reconnect_min_s
        reason = ""
        while not self._closed.is_set():
            if conn is None:
                try:
                    conn = self._connect()
                except CameraConfigError as exc:
                    reason = f"the camera refused the configuration: {exc}"
                except Exception as exc:  # noqa: BLE001 - any open failure is an outage, retried
                    reason = f"cannot open {self.describe}: {exc}"
            if conn is None:
                self._outage(reason, delay)
                if self._closed.wait(delay):
                    return
                delay = min(delay * 2, cfg.reconnect_max_s)
                continue
            self._connected(conn)
            failure, delivered = self._pump(conn)
            with self._cond:
                self._conn = None
            if failure is not None:
                if delivered:
                    delay = cfg.reconnect_min_s  # it worked for a while: start the backoff again
                self._outage(failure, delay)  # before closing: a dead GigE camera takes seconds to time out
            with self._conn_lock:
                conn.close()
            conn = None
            if failure is None or self._closed.wait(delay):
                return
            delay = min(delay * 2, cfg.reconnect_max_s)

    def _connected(self, conn: Connection) -> None:
        with self._cond:
            self._conn = conn
            self._ids.reset()
            self._unknown = 0
            self._flush.clear()  # a fresh stream has nothing from before
            if self._in_outage:
                self._in_outage = False
                if self._stats is not None:
                    self._stats.camera_reconnect()
                log.info("camera_reconnected", camera=self.name, device=conn.info.describe())

    def _pump(self, conn: Connection) -> tuple[str | None, bool]:
        """Grab until the camera fails (why, any frames?) or the source closes (None, ...)."""
        stall = self._config.stall_timeout_s
        last = time.monotonic()
        delivered = False
        while not self._closed.is_set():
            if self._flush.is_set():
                self._restart(conn)
            try:
                exposure = conn.grab(_GRAB_S)
            except Exception as exc:  # noqa: BLE001 - the transport layer's error is the outage reason
                return f"{conn.info.describe()}: {exc}", delivered
            if conn.lost:
                return f"{conn.info.describe()}: {conn.lost}", delivered
            now = time.monotonic()
            if exposure is None:
                if self.live and now - last > stall:
                    return f"no frame from {conn.info.describe()} for {stall:g} s (stalled)", delivered
                continue
            last, delivered = now, True
            self._account(exposure, conn.short_frame_ids)
        return None, delivered

    def _restart(self, conn: Connection) -> None:
        """After a missed software trigger: stop and start acquisition, dropping any exposure still on its way."""
        with self._conn_lock:
            conn.stop()
            with self._cond:
                stale = [e for e in self._queue if isinstance(e, Exposure)]
                for e in stale:
                    self._queue.remove(e)
            conn.start(self._config.buffers)
        self._ids.reset()
        log.info("camera_acquisition_restarted", camera=self.name, reason="a software trigger got no exposure",
                 discarded=len(stale))
        self._flush.clear()
        with self._cond:
            self._cond.notify_all()

    # accounting and delivery ------------------------------------------------------------------------------------
    def _account(self, exposure: Exposure, short_ids: bool) -> None:
        missing = 0
        if exposure.camera_frame_id == UNKNOWN_ID:
            self._unknown += 1  # its id will show as a gap before the next buffer: count it once
        else:
            missing = max(0, self._ids.missing_before(exposure.camera_frame_id, short=short_ids) - self._unknown)
            self._unknown = 0
        if missing:
            self._lost(missing, "frame-id gap")
        if exposure.error:
            self._lost(1, "incomplete buffer")
            if self.trigger == "free":
                return  # a free-running frame, not a part: counted, not judged
        with self._cond:
            if self.trigger == "hardware":  # every exposure is a part: a lost one keeps its place as an error
                for k in range(min(missing, _MAX_LOST_FRAMES)):
                    fid = exposure.camera_frame_id - missing + k
                    self._queue.append(Exposure(fid, None, exposure.received, exposure.received_ts,
                                                error="exposure lost on the way (camera frame id skipped)"))
            self._append(exposure)
            self._cond.notify_all()

    def _append(self, exposure: Exposure) -> None:
        images = [e for e in self._queue if isinstance(e, Exposure) and e.data is not None]
        if self.trigger == "free" and len(images) >= _BUFFER:
            self._queue.remove(images[0])
            self.dropped += 1
        elif self.trigger == "hardware" and len(images) >= self._config.buffers:
            oldest = images[0]  # keep its place in the part sequence, free its pixels
            oldest.data, oldest.error = None, f"inspectd fell {len(images)} exposures behind the camera"
        self._queue.append(exposure)

    def _lost(self, n: int, why: str) -> None:
        if self._stats is not None:
            self._stats.camera_dropped(n)
        self._lost_unlogged[why] = self._lost_unlogged.get(why, 0) + n
        now = time.monotonic()
        if now - self._lost_logged_at >= _LOG_EVERY_S:
            log.warning("camera_frames_dropped", camera=self.name, counts=self._lost_unlogged,
                        hint="network: MTU, socket buffers, packet size/delay (README, Industrial cameras)")
            self._lost_unlogged, self._lost_logged_at = {}, now

    def _outage(self, reason: str, retry_in: float, *, queue: bool = True) -> Frame | None:
        """Record an outage once (one error frame, one count); returns the frame when it is a new outage."""
        with self._cond:
            self._reason = reason
            if self._in_outage:
                log.debug("camera_retry", camera=self.name, reason=reason, retry_in_s=retry_in)
                return None
            self._in_outage = True
            if self._stats is not None:
                self._stats.camera_outage()
            log.warning("camera_lost", camera=self.name, reason=reason, retry_in_s=retry_in)
            frame = self._factory.make(None, error=f"camera {self.name} lost: {reason}; reconnecting", outage=True)
            if queue:
                self._queue.append(frame)
                self._cond.notify_all()
            return frame

    def _frame(self, exposure: Exposure) -> Frame:
        """The BGR frame of an exposure (converted here, on the reader's side of the queue), or its error frame."""
        stamp = CameraStamp(exposure.camera_frame_id, exposure.timestamp_ns)
        if exposure.error or exposure.data is None:
            error = f"camera {self.name}, frame {exposure.camera_frame_id}: {exposure.error or 'no pixels'}"
            frame = self._factory.make(None, error=error, camera=stamp)
        else:
            try:
                image = pixels.to_bgr(exposure.data, exposure.width, exposure.height, exposure.pixel_format,
                                      exposure.stride)
            except ValueError as exc:
                frame = self._factory.make(None, error=f"camera {self.name}: {exc}", camera=stamp)
            else:
                frame = self._factory.make(image, camera=stamp)
        frame.ts, frame.mono = exposure.received_ts, exposure.received
        return frame

    # consumer side ----------------------------------------------------------------------------------------------
    def read(self, timeout: float) -> Frame | None:
        """The next frame or outage report, oldest first.

        With a software trigger only outage reports: exposures are collected with `exposure`.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self._queue:
                    if isinstance(entry, Frame) or self.trigger != "software":
                        self._queue.remove(entry)
                        return entry if isinstance(entry, Frame) else self._frame(entry)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    return None
                self._cond.wait(remaining)

    def fire(self) -> Frame | None:
        """Software trigger: execute TriggerSoftware for the next part; collect its frame with `exposure`.

        Never a frame from before the trigger: exposures already queued are discarded first, and when the previous
        trigger got no exposure, acquisition is restarted (dropping anything still on its way) before this one.
        Returns None when fired, or the error frame this part gets when it cannot be (camera lost: the outage
        report, once; refused command).
        """
        if self._awaiting:  # the last trigger's exposure never came: it must not turn up as this part's
            self._flush.set()
            with self._cond:
                self._cond.wait_for(lambda: not self._flush.is_set() or self._conn is None or self._closed.is_set(),
                                    timeout=_FLUSH_WAIT_S)
            self._awaiting = False
        with self._cond:
            outage = next((e for e in self._queue if isinstance(e, Frame)), None)
            if outage is not None:  # the camera went away since the last trigger: this part gets that report
                self._queue.remove(outage)
                return outage
            stale = [e for e in self._queue if isinstance(e, Exposure)]
            for e in stale:
                self._queue.remove(e)
            conn, reason, flushing = self._conn, self._reason, self._flush.is_set()
        if stale:
            log.warning("stale_exposures_discarded", camera=self.name, count=len(stale),
                        camera_frame_ids=[e.camera_frame_id for e in stale][:10])
        if conn is None:
            return self._factory.make(None, error=f"camera {self.name} is not connected ({reason}); reconnecting")
        if flushing:
            return self._factory.make(None, error=f"camera {self.name} did not restart acquisition within "
                                                  f"{_FLUSH_WAIT_S:g} s after a trigger that got no exposure")
        fired = time.monotonic()
        try:
            with self._conn_lock:
                conn.trigger()
        except Exception as exc:  # noqa: BLE001 - a dead control channel: this part reports the outage
            conn.lost = f"TriggerSoftware failed: {exc}"
            frame = self._outage(f"{conn.info.describe()}: {conn.lost}", self._config.reconnect_min_s, queue=False)
            return frame or self._factory.make(None, error=f"camera {self.name}: {conn.lost}")
        self._fired_at, self._awaiting = fired, True
        return None

    def exposure(self, timeout: float) -> Frame | None:
        """The exposure the last `fire` caused, or the outage report that ended the wait.

        An exposure that came incomplete is an error frame; None when nothing came within `timeout` (call again, or
        give the part up).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in list(self._queue):
                    self._queue.remove(entry)
                    if isinstance(entry, Frame):
                        self._awaiting = False
                        return entry
                    if entry.received >= self._fired_at:
                        self._awaiting = False
                        return self._frame(entry)
                    log.warning("stale_exposures_discarded", camera=self.name, count=1,
                                camera_frame_ids=[entry.camera_frame_id])
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    return None
                self._cond.wait(remaining)

    def error_frame(self, error: str) -> Frame:
        """An error frame numbered in this source's frame_id sequence."""
        return self._factory.make(None, error=error)

    def close(self) -> None:
        """Stop the reader, which stops acquisition and releases the camera (waits a few seconds at most)."""
        self._closed.set()
        self.finished = True
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
