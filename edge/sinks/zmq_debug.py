"""ZeroMQ debug stream: frames + heatmaps for `inspectd view`, never at the pipeline's expense.

Wire format, one single-frame ZeroMQ message per debug frame (format 2):

    topic | 0x00 | header length, JPEG length, PNG length (3 x uint32, big-endian) | header JSON | JPEG | PNG

- topic: ``inspectd/debug/<source>`` (UTF-8); a viewer subscribes to the ``inspectd/debug`` prefix (ZeroMQ matches
  the start of the message).
- header: the verdict's fields (seq, frame_id, ts, verdict, score, threshold, regions, latency_ms, model, source,
  part_id, error) plus ``timings`` (ms per stage), ``frame_size`` [w, h] of the captured frame (region boxes are in
  those coordinates; the JPEG may be downscaled), ``heatmap_max`` (the map value that PNG level 255 stands for),
  ``sent`` / ``dropped`` (debug frames sent and skipped by the rate limit so far) and ``format`` (version).
- frame: JPEG of the captured BGR frame, longest side at most ``MAX_SIDE``; empty when the verdict has no frame.
- heatmap: 8-bit grey PNG of the anomaly map at model size, ``level = clip(map / heatmap_max, 0, 1) * 255``;
  empty when the verdict has no map (e.g. an ``error``).

Why one frame and not a multipart message (format 1 was ``[topic, header, jpeg, png]``): libzmq 4.3 aborts the
*publishing* process (``Resource temporarily unavailable (src/session_base.cpp:233)``, zeromq/libzmq#3442) when the
PUB socket is closed while a peer that has stopped reading disconnects and a multipart message is half-sent to it
-- a stalled viewer quitting as the daemon stops took the daemon down with SIGABRT. A single-frame message is never
half-pulled from the pipe, so that assertion cannot be reached.

Why it cannot slow the pipeline: `publish` only swaps the inspection into a one-slot "latest wins" buffer (a lock
and a reference, no copying or encoding); a worker thread does the JPEG/PNG encoding at most `debug.fps` times a
second and sends with NOBLOCK on a PUB socket whose high-water mark is small and LINGER is 0, so a slow or stalled
viewer only loses debug frames.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import json
import math
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge.config import DebugConfig
from edge.errors import ConfigError, InspectdError
from edge.log import bind_thread, get_logger
from edge.verdict import Inspection

log = get_logger(__name__)

TOPIC_PREFIX = "inspectd/debug"
FORMAT_VERSION = 2
_LENGTHS = struct.Struct(">III")  # header, JPEG and PNG byte counts, after the topic's NUL terminator
MAX_SIDE = 1280  # debug JPEGs are downscaled to this longest side: cheaper to encode and to send
HEATMAP_MAX = 2.0  # map value sent as PNG level 255 (and drawn at the top of the viewer's colour map); 1.0 is mid-grey


class DebugStreamError(InspectdError):
    """Raised when a debug-stream message cannot be decoded (not one frame, truncated, bad JSON or image)."""


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this host (tcp loopback, ipc, inproc).

    `tcp://*:5556`, `tcp://0.0.0.0:5556` and interface names count as *not* loopback.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in {"ipc", "inproc"}:
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _curve_keys(path: Path, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) from a zmq.auth certificate file, with errors that name the file and the key."""
    if not path.is_file():
        msg = f"{what} {path} not found (create a key pair with zmq.auth.create_certificates(folder, name))"
        raise ConfigError(msg)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        msg = f"{what} {path} is not a zmq.auth certificate file: {exc}"
        raise ConfigError(msg) from None
    return public, secret


class _ClientKeys:
    """One sink's CURVE client rule: any client that knows the server key (`keys` None), or only these public keys."""

    def __init__(self, keys: set[bytes] | None) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        """The credentials-provider hook pyzmq calls: may the client with this z85 public key connect?"""
        return self.keys is None or key in self.keys


_AUTH_LOCK = threading.Lock()
_ZAP_DOMAINS = itertools.count(1)


@functools.cache
def _authenticator() -> ThreadAuthenticator:
    """The process-wide ZAP authenticator, started on first use and never stopped (like the context).

    One per sink meant binding inproc://zeromq.zap.01 and an inproc pipe named after id() again for every sink on
    the shared context; that churn aborted the process inside libzmq under load (seen in the tests). Each sink
    registers its own ZAP domain here instead, and its socket names it.
    """
    auth = ThreadAuthenticator(zmq.Context.instance())
    auth.start()
    return auth


def _register_clients(clients: _ClientKeys) -> str:
    """A fresh ZAP domain whose CURVE clients `clients` decides."""
    with _AUTH_LOCK:
        domain = f"inspectd-debug-{next(_ZAP_DOMAINS)}"
        _authenticator().configure_curve_callback(domain, clients)
    return domain


def _unregister_clients(domain: str) -> None:
    """Forget a closed sink's domain: nobody is admitted under it any more."""
    with _AUTH_LOCK:
        _authenticator().credentials_providers.pop(domain, None)


def encode_message(
    inspection: Inspection, *, jpeg_quality: int = 80, counters: dict[str, int] | None = None
) -> bytes:
    """The one-frame debug message for `inspection` (see the module docstring)."""
    v = inspection.verdict
    header: dict[str, Any] = v.to_dict()
    header["timings"] = {k: round(float(ms), 3) for k, ms in inspection.timings_ms.items()}
    header["format"] = FORMAT_VERSION
    header["heatmap_max"] = HEATMAP_MAX
    header.update(counters or {})
    frame_bytes = b""
    frame = inspection.frame
    if frame is not None and frame.size:
        h, w = frame.shape[:2]
        header["frame_size"] = [int(w), int(h)]
        scale = MAX_SIDE / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        frame_bytes = buf.tobytes() if ok else b""
    heat_bytes = b""
    amap = inspection.anomaly_map
    if amap is not None and amap.size:
        amap = np.asarray(amap, np.float32).reshape(amap.shape[-2:])
        level = np.clip(np.nan_to_num(amap, nan=0.0) * (255.0 / HEATMAP_MAX), 0.0, 255.0).astype(np.uint8)
        ok, buf = cv2.imencode(".png", level, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        heat_bytes = buf.tobytes() if ok else b""
    topic = f"{TOPIC_PREFIX}/{v.source or 'cam'}".replace("\0", "").encode()
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    lengths = _LENGTHS.pack(len(header_bytes), len(frame_bytes), len(heat_bytes))
    return b"".join((topic, b"\0", lengths, header_bytes, frame_bytes, heat_bytes))


@dataclass
class DebugFrame:
    """One decoded debug message: header dict, BGR frame (or None) and the anomaly map as float32 (or None)."""

    topic: str
    header: dict[str, Any]
    frame: np.ndarray | None = None
    anomaly_map: np.ndarray | None = None
    received: float = field(default_factory=time.monotonic)


def single_frame(frames: list[bytes]) -> bytes:
    """The message in what `recv_multipart` returned; a multipart one comes from a daemon speaking format 1."""
    if len(frames) != 1:
        msg = (f"debug message has {len(frames)} parts: the daemon speaks debug format 1 (multipart), this viewer "
               f"format {FORMAT_VERSION} (one frame); run the same inspectd version on both")
        raise DebugStreamError(msg)
    return frames[0]


def _split(message: bytes) -> tuple[str, bytes, bytes, bytes]:
    """(topic, header JSON, JPEG, PNG) of a message, with errors that say what is missing."""
    end = message.find(b"\0")
    if end < 0 or len(message) < end + 1 + _LENGTHS.size:
        msg = f"debug message ({len(message)} bytes) lacks the topic terminator and lengths of format {FORMAT_VERSION}"
        raise DebugStreamError(msg)
    sizes = _LENGTHS.unpack_from(message, end + 1)
    start = end + 1 + _LENGTHS.size
    if start + sum(sizes) != len(message):
        msg = (f"debug message is {len(message)} bytes but its lengths (header, JPEG, PNG = {sizes}) say "
               f"{start + sum(sizes)}: truncated or not format {FORMAT_VERSION}")
        raise DebugStreamError(msg)
    header_end = start + sizes[0]
    jpeg_end = header_end + sizes[1]
    topic = message[:end].decode("utf-8", "replace")
    return topic, message[start:header_end], message[header_end:jpeg_end], message[jpeg_end:]


def _parse_header(data: bytes) -> dict[str, Any]:
    """The header JSON as a dict that has at least seq and verdict (the viewer keys on both)."""
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"debug message header is not JSON: {exc}"
        raise DebugStreamError(msg) from None
    if not isinstance(header, dict) or "seq" not in header or "verdict" not in header:
        msg = f"debug message header lacks seq/verdict: {str(header)[:120]}"
        raise DebugStreamError(msg)
    return header


def decode_header(message: bytes) -> tuple[str, dict[str, Any]]:
    """Topic and header of a message, without touching the images (cheap: used when draining)."""
    topic, header, _, _ = _split(message)
    return topic, _parse_header(header)


def _decode_part(data: bytes, flags: int, what: str, kind: str) -> np.ndarray | None:
    """An image part of a debug message; None when empty (the part was not sent)."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        msg = f"{what} is not a decodable {kind} ({len(data)} bytes)"
        raise DebugStreamError(msg)
    return image


def decode_message(message: bytes) -> DebugFrame:
    """Decode header, frame and heatmap; the heatmap comes back on the normalised scale (threshold = 1.0)."""
    topic, header_bytes, jpeg, png = _split(message)
    header = _parse_header(header_bytes)
    frame = _decode_part(jpeg, cv2.IMREAD_COLOR, f"debug message seq {header['seq']}: frame part", "JPEG")
    level = _decode_part(png, cv2.IMREAD_UNCHANGED, f"debug message seq {header['seq']}: heatmap part", "PNG")
    amap = None
    if level is not None:
        amap = level.astype(np.float32) * (float(header.get("heatmap_max", HEATMAP_MAX)) / 255.0)
    return DebugFrame(topic=topic, header=header, frame=frame, anomaly_map=amap)


class DebugSink:
    """The `[debug]` sink: a ZeroMQ PUB socket fed by a rate-limited encoder thread (see the module docstring).

    Raises:
        ConfigError: `debug.bind` is not loopback and no CURVE secret key is configured, a key file is missing or
            malformed, or the endpoint cannot be bound (e.g. the port is in use).
    """

    def __init__(self, config: DebugConfig) -> None:
        self.config = config
        self.sent = 0
        self.dropped = 0  # overwritten in the slot before the encoder took them (rate limit / slow encoder)
        self.errors = 0
        loopback = is_loopback_endpoint(config.bind)
        if not loopback and config.curve_secret_key is None:
            msg = (
                f"debug.bind = {config.bind!r} is reachable from other hosts, but debug.curve_secret_key is not set; "
                "bind to tcp://127.0.0.1:PORT (view it over an SSH tunnel) or configure CURVE keys "
                "(debug.curve_secret_key and debug.curve_clients_dir)"
            )
            raise ConfigError(msg)
        # The process-wide context, never terminated by us: terminating a context while a stalled subscriber's
        # TCP pipe is still being torn down aborted the process inside libzmq (seen in the tests). Sockets are
        # closed with LINGER 0, so nothing is left queued.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._zap_domain: str | None = None
        self._sock = self._ctx.socket(zmq.PUB)
        try:
            self._sock.setsockopt(zmq.SNDHWM, config.hwm)
            self._sock.setsockopt(zmq.LINGER, 0)
            if config.curve_secret_key is not None:
                self._setup_curve(config.curve_secret_key, config.curve_clients_dir)
            self._sock.bind(config.bind)
        except zmq.ZMQError as exc:
            self._close_socket()
            msg = f"debug.bind = {config.bind!r} cannot be bound: {exc}"
            raise ConfigError(msg) from None
        except BaseException:
            self._close_socket()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._cond = threading.Condition()
        self._slot: Inspection | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="debug-stream", daemon=True)
        self._thread.start()
        log.info("debug_stream_started", endpoint=self.endpoint, fps=config.fps, hwm=config.hwm,
                 curve=config.curve_secret_key is not None)

    def _setup_curve(self, secret_key: Path, clients_dir: Path | None) -> None:
        """CURVE server: our key pair on the socket, and a ZAP authenticator deciding which clients may connect."""
        public, secret = _curve_keys(secret_key, "debug.curve_secret_key")
        if not secret:
            msg = f"debug.curve_secret_key {secret_key} holds only a public key; give the .key_secret file"
            raise ConfigError(msg)
        keys: set[bytes] | None = None  # encrypted, and any client that knows the server's public key may connect
        if clients_dir is not None:
            if not clients_dir.is_dir():
                msg = f"debug.curve_clients_dir {clients_dir} is not a folder of client public keys"
                raise ConfigError(msg)
            try:
                keys = set(zmq.auth.load_certificates(clients_dir))
            except (ValueError, OSError) as exc:
                msg = f"debug.curve_clients_dir {clients_dir} holds a file that is not a zmq.auth certificate: {exc}"
                raise ConfigError(msg) from None
        self._zap_domain = _register_clients(_ClientKeys(keys))
        self._sock.zap_domain = self._zap_domain.encode()
        self._sock.curve_secretkey = secret
        self._sock.curve_publickey = public
        self._sock.curve_server = True

    # Sink protocol -------------------------------------------------------------------------------------------------

    def publish(self, inspection: Inspection) -> None:
        """Offer a frame to the debug stream; O(1), never blocks on the network or on encoding.

        Latest wins, except that a pending fail/error is not displaced by a pass, so a viewer's strip of failed
        frames still sees failures between two rate-limited sends.
        """
        with self._cond:
            pending = self._slot
            if pending is not None:
                self.dropped += 1
                if pending.verdict.outcome != "pass" and inspection.verdict.outcome == "pass":
                    return
            self._slot = inspection
            self._cond.notify()

    def publish_stats(self, snapshot: Mapping[str, Any]) -> None:
        """The debug stream carries no statistics (each frame's header has its own timings)."""

    def wait_delivered(self, timeout: float) -> bool:
        """Debug frames are fire-and-forget: nothing to wait for."""
        return True

    def close(self, deadline: float = math.inf) -> None:
        """Stop the encoder thread and close the socket without lingering (idempotent).

        The encoder is given 10 s to stop whatever `deadline` says: closing the socket under it would abort.
        """
        with self._cond:
            if self._stop:
                return
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10.0)
        if self._thread.is_alive():
            # Closing a socket another thread is using aborts the process (ZeroMQ asserts): leak it instead.
            log.warning("debug_stream_close_timeout", action="socket left open until exit")
            return
        self._close_socket()
        log.info("debug_stream_closed", sent=self.sent, dropped=self.dropped, errors=self.errors)

    def __enter__(self) -> DebugSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # worker --------------------------------------------------------------------------------------------------------

    def _close_socket(self) -> None:
        self._sock.close(linger=0)
        if self._zap_domain is not None:
            _unregister_clients(self._zap_domain)
            self._zap_domain = None

    def _run(self) -> None:
        bind_thread(stage="debug")
        interval = 1.0 / self.config.fps
        next_send = 0.0
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                wait = next_send - time.monotonic()
                if wait > 0:
                    # Rate limit: newer frames may replace the slot while we wait; stop wakes us early.
                    self._cond.wait_for(lambda: self._stop, timeout=wait)
                    if self._stop:
                        return
                inspection, self._slot = self._slot, None
            if inspection is None:
                continue
            next_send = time.monotonic() + interval
            try:
                message = encode_message(
                    inspection,
                    jpeg_quality=self.config.jpeg_quality,
                    counters={"sent": self.sent + 1, "dropped": self.dropped},
                )
                # copy=True on purpose: zero-copy sends of large messages go through pyzmq's garbage-collector thread,
                # and terminating the context while it still holds them aborted the process (seen in the tests).
                # A debug frame is ~100 KB at a few fps; the copy costs nothing that matters.
                self._sock.send(message, flags=zmq.NOBLOCK, copy=True)
                self.sent += 1
            except zmq.Again:
                self.dropped += 1  # PUB drops at the HWM rather than raising, but be safe
            except Exception as exc:  # noqa: BLE001 - the debug stream must never take the daemon down
                self.errors += 1
                if self.errors <= 5 or self.errors % 1000 == 0:
                    log.warning("debug_stream_send_failed", seq=inspection.verdict.seq, error=str(exc),
                                errors=self.errors)
