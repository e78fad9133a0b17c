"""`inspectd view tcp://HOST:PORT`: watch a daemon's debug stream (frames, heatmaps, verdicts) on a laptop.

The viewer subscribes to the ZeroMQ debug stream (edge/sinks/zmq_debug.py), drains it without blocking and keeps
only the newest message for display (the stream is rate-limited by the daemon; anything older is stale), while every
drained header still counts for FPS and every failed frame still goes into the strip of recent failures.

ZeroMQ reconnects by itself, so a daemon restart needs nothing from us: after `--gap` seconds without a frame the
view says "waiting for daemon" and resumes when frames come back.

Keys (window mode): `o` toggle overlay, `space` pause, `s` save snapshot, `q` / Esc quit. Headless:
`--snapshot out.png --frames N` renders to a file after N frames and exits (what the tests use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from edge.errors import ConfigError, InspectdError
from edge.log import get_logger
from edge.sinks.zmq_debug import (
    TOPIC_PREFIX,
    DebugFrame,
    DebugStreamError,
    _curve_keys,
    decode_header,
    decode_message,
    single_frame,
)
from edge.tools import render

log = get_logger(__name__)

WINDOW = "inspectd view"


class ViewerTimeoutError(InspectdError):
    """Raised when no debug frame arrived within `--timeout` seconds."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inspectd view`."""
    parser.add_argument("endpoint", help="the daemon's debug.bind as seen from here, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--snapshot", type=Path, metavar="PNG",
                        help="headless: write the rendered view to this PNG after --frames frames, then exit")
    parser.add_argument("--frames", type=int, default=1, metavar="N",
                        help="with --snapshot: debug frames to receive before rendering (default 1)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="exit with an error when no frame arrived for S seconds (default: 30 with --snapshot, "
                             "never in window mode)")
    parser.add_argument("--width", type=int, default=960, help="width of the rendered view in pixels (default 960)")
    parser.add_argument("--strip", type=int, default=6, metavar="N", help="failed frames kept in the strip (default 6)")
    parser.add_argument("--gap", type=float, default=2.0, metavar="S",
                        help='seconds without frames before the view shows "waiting for daemon" (default 2)')
    parser.add_argument("--topic", default=TOPIC_PREFIX, help=f"topic prefix to subscribe to (default {TOPIC_PREFIX})")
    parser.add_argument("--curve-server-key", type=Path, metavar="FILE",
                        help="the daemon's CURVE public key file (zmq.auth format), when it binds beyond loopback")
    parser.add_argument("--curve-client-key", type=Path, metavar="FILE",
                        help="this viewer's CURVE secret key file (must be in the daemon's curve_clients_dir); "
                             "default: a throwaway key pair, accepted when the daemon allows any client")


def _client_keys(server_key: Path, client_key: Path | None) -> tuple[bytes, bytes, bytes]:
    """(server public, client public, client secret) for a CURVE client; a throwaway client pair when none given."""
    server_public, _ = _curve_keys(server_key, "--curve-server-key")
    if client_key is None:
        public, secret = zmq.curve_keypair()
        return server_public, public, secret
    client_public, client_secret = _curve_keys(client_key, "--curve-client-key")
    if not client_secret:
        msg = f"--curve-client-key {client_key} holds no secret key; give the .key_secret file"
        raise ConfigError(msg)
    return server_public, client_public, client_secret


class Viewer:
    """Subscriber state and rendering, without any window: `poll()` drains the socket, `view()` draws."""

    def __init__(
        self,
        endpoint: str,
        *,
        topic: str = TOPIC_PREFIX,
        strip: int = 6,
        width: int = 960,
        gap_s: float = 2.0,
        curve_server_key: Path | None = None,
        curve_client_key: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.width = width
        self.strip_n = strip
        self.gap_s = gap_s
        self.overlay = True
        self.paused = False
        self.latest: DebugFrame | None = None
        self.shown: DebugFrame | None = None  # what the view shows (frozen while paused)
        self.failed: deque[np.ndarray] = deque(maxlen=max(1, strip))
        self.received = 0
        self.bad = 0
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=64)  # (monotonic, seq)
        self._last_view: np.ndarray | None = None
        keys = _client_keys(curve_server_key, curve_client_key) if curve_server_key is not None else None
        # The process-wide context, shared and never terminated: see edge/sinks/zmq_debug.py.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 16)
        self._sock.setsockopt(zmq.RECONNECT_IVL, 100)  # a restarted daemon is found again within a second
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if keys is not None:
            self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = keys
        self._sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            msg = f"cannot connect to debug stream {endpoint!r}: {exc} (expected e.g. tcp://127.0.0.1:5556)"
            raise ConfigError(msg) from None

    def close(self) -> None:
        """Close the socket (the shared context stays)."""
        self._sock.close(linger=0)

    # receiving -------------------------------------------------------------------------------------------------------

    def poll(self, timeout_ms: int = 50) -> int:
        """Wait up to `timeout_ms` for a message, then drain everything queued; returns how many arrived."""
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return 0
        newest: bytes | None = None
        count = 0
        while True:
            try:
                frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = single_frame(frames)
                _, header = decode_header(message)
            except DebugStreamError as exc:
                self.bad += 1
                log.warning("debug_message_bad", error=str(exc))
                continue
            count += 1
            self._arrivals.append((time.monotonic(), int(header["seq"])))
            if header["verdict"] != "pass":
                self._remember_failure(message)
            newest = message
        if newest is not None:
            try:
                self.latest = decode_message(newest)
            except DebugStreamError as exc:
                self.bad += 1
                log.warning("debug_message_bad", error=str(exc))
            else:
                self.received += count
                if not self.paused:
                    self.shown = self.latest
        return count

    def _remember_failure(self, message: bytes) -> None:
        try:
            frame = decode_message(message)
        except DebugStreamError:
            return
        thumb = render.render_frame(frame.frame, frame.anomaly_map, frame.header, width=240, banner=False,
                                    lines=[f"#{frame.header['seq']} {frame.header['verdict']} "
                                           f"{render.fmt_num(frame.header.get('score'))}"])
        self.failed.appendleft(thumb)

    # rendering -------------------------------------------------------------------------------------------------------

    def rates(self) -> tuple[float | None, float | None]:
        """(debug frames per second received, daemon verdicts per second estimated from seq) over recent arrivals."""
        if len(self._arrivals) < 2:
            return None, None
        (t0, s0), (t1, s1) = self._arrivals[0], self._arrivals[-1]
        dt = t1 - t0
        if dt <= 0:
            return None, None
        return (len(self._arrivals) - 1) / dt, max(0, s1 - s0) / dt

    def stale(self, now: float | None = None) -> bool:
        """True when nothing arrived for `gap_s` seconds (or ever): the daemon is down or restarting."""
        if not self._arrivals:
            return True
        return ((now or time.monotonic()) - self._arrivals[-1][0]) > self.gap_s

    def view(self, now: float | None = None) -> np.ndarray:
        """The whole window: current frame with overlay, boxes, banner and rates, and the failed-frame strip."""
        now = now or time.monotonic()
        shown = self.shown
        if shown is None or (self.stale(now) and not self.paused):
            main = render.waiting_view(self.width, round(self.width * 0.6),
                                       f"waiting for daemon at {self.endpoint}", self._last_view)
        else:
            stream_fps, daemon_fps = self.rates()
            timings = shown.header.get("timings") or {}
            lines = [
                f"stream {render.fmt_num(stream_fps, '.1f')} fps  daemon ~{render.fmt_num(daemon_fps, '.0f')} fps",
                f"latency {render.fmt_num(shown.header.get('latency_ms'), '.1f')} ms"
                + (f"  infer {render.fmt_num(timings['infer'], '.1f')} ms" if "infer" in timings else ""),
            ]
            if self.paused:
                lines.append("PAUSED (space)")
            if not self.overlay:
                lines.append("overlay off (o)")
            main = render.render_frame(shown.frame, shown.anomaly_map, shown.header, overlay=self.overlay,
                                       width=self.width, lines=lines)
            self._last_view = main
        strip = render.failed_strip(list(self.failed), width=main.shape[1], n=self.strip_n,
                                    caption=f"last {self.strip_n} failed frames (newest left)")
        return np.vstack([main, strip])


def _has_display() -> bool:
    if sys.platform != "linux":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        msg = f"cannot write snapshot {path} (is the folder writable and the name a .png?)"
        raise InspectdError(msg)


def run_snapshot(viewer: Viewer, out: Path, frames: int, timeout_s: float) -> int:
    """Receive `frames` debug frames (waiting at most `timeout_s` for each gap), render once, write the PNG."""
    last = time.monotonic()
    while viewer.received < frames:
        if viewer.poll(100):
            last = time.monotonic()
        elif time.monotonic() - last > timeout_s:
            msg = (
                f"no debug frame from {viewer.endpoint} for {timeout_s:g} s ({viewer.received}/{frames} received); "
                "is the daemon running with [debug] enabled = true and this bind address?"
            )
            raise ViewerTimeoutError(msg)
    _write_png(out, viewer.view())
    print(f"snapshot {out} after {viewer.received} frames (last seq {viewer.latest.header['seq']})")  # type: ignore[union-attr]
    return 0


def run_window(viewer: Viewer, timeout_s: float | None, snapshot_dir: Path) -> int:
    """Interactive loop: show the view, handle keys, until `q` or the window is closed."""
    import cv2

    if not _has_display():
        msg = "no display (DISPLAY/WAYLAND_DISPLAY unset): use --snapshot out.png --frames N, or ssh -X"
        raise ConfigError(msg)
    cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    last = time.monotonic()
    try:
        while True:
            if viewer.poll(30):
                last = time.monotonic()
            elif timeout_s is not None and time.monotonic() - last > timeout_s:
                msg = f"no debug frame from {viewer.endpoint} for {timeout_s:g} s"
                raise ViewerTimeoutError(msg)
            cv2.imshow(WINDOW, viewer.view())
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                break
            if key == ord("o"):
                viewer.overlay = not viewer.overlay
            elif key == ord(" "):
                viewer.paused = not viewer.paused
                if not viewer.paused:
                    viewer.shown = viewer.latest
            elif key == ord("s"):
                seq = viewer.shown.header["seq"] if viewer.shown else "none"
                path = snapshot_dir / f"inspectd-snapshot-{seq}-{time.strftime('%Y%m%d-%H%M%S')}.png"
                _write_png(path, viewer.view())
                print(f"saved {path}")
            if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        cv2.destroyAllWindows()
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of `inspectd view`."""
    if args.frames < 1:
        msg = f"--frames must be >= 1, got {args.frames}"
        raise ConfigError(msg)
    viewer = Viewer(
        args.endpoint,
        topic=args.topic,
        strip=args.strip,
        width=args.width,
        gap_s=args.gap,
        curve_server_key=args.curve_server_key,
        curve_client_key=args.curve_client_key,
    )
    try:
        if args.snapshot is not None:
            return run_snapshot(viewer, args.snapshot, args.frames, args.timeout or 30.0)
        return run_window(viewer, args.timeout, Path.cwd())
    finally:
        viewer.close()
