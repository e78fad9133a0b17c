"""The `aravis` driver: GigE Vision and USB3 Vision cameras through libaravis 0.8 (LGPL), no vendor SDK.

libaravis is used through PyGObject (`gi.require_version("Aravis", "0.8")`; Debian/Ubuntu/JetPack package
`gir1.2-aravis-0.8`). Features are read and written through Aravis' own GenICam engine (the camera's XML); the
driver adds what the source needs on top:

- the stream uses a Linux packet socket when `source.packet_socket` (faster; Aravis falls back to a plain UDP socket
  without CAP_NET_RAW) and always the plain socket when it is false: cameras on loopback (arv-fake-gv-camera) and
  some containers deliver nothing to the packet socket. The UDP socket buffer is sized to a whole frame
  (`socket-buffer` AUTO): with the kernel default a burst of packets overflows it and frames arrive incomplete.
- `control-lost` (the GigE heartbeat went unanswered for a few seconds) marks the connection lost, so a triggered
  camera that sends no frames between parts is still seen going away.
- `source.uri` may also be the plain serial number, which Aravis itself only matches as vendor-serial: discovery
  is matched against CameraInfo when Aravis does not know the name.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any

import gi
import numpy as np

gi.require_version("Aravis", "0.8")
from gi.repository import Aravis, GLib  # noqa: E402 - require_version must come first

from edge.sources import pixels  # noqa: E402
from edge.sources.features import CameraIOError, NodeKind, Value  # noqa: E402
from edge.sources.genicam import CameraInfo, CameraNotFound, Exposure  # noqa: E402

_KINDS: tuple[tuple[Any, NodeKind], ...] = (  # most specific first: an enumeration is also a string and an integer
    (Aravis.GcEnumeration, "enumeration"),
    (Aravis.GcBoolean, "boolean"),
    (Aravis.GcCommand, "command"),
    (Aravis.GcFloat, "float"),
    (Aravis.GcInteger, "integer"),
    (Aravis.GcString, "string"),
)
_WRITABLE = (Aravis.GcAccessMode.RW, Aravis.GcAccessMode.WO)
_IO_ERRORS = {  # ArvDeviceError codes that mean "the camera did not answer", not "the value is wrong"
    Aravis.DeviceError.NOT_CONNECTED, Aravis.DeviceError.TRANSFER_ERROR, Aravis.DeviceError.TIMEOUT,
    Aravis.DeviceError.NOT_CONTROLLER, Aravis.DeviceError.PROTOCOL_ERROR_BUSY,
}


_PROTOCOL_OVERHEAD = 1024  # what Aravis' AUTO socket buffer adds to the payload (IP + UDP + GVSP headers)


def _grow_receive_buffer(port: int, size: int) -> None:
    """Size the stream's UDP receive buffer to a whole frame now, before the first frame is sent.

    Aravis' AUTO mode grows it only when the first frame's leader arrives, so a frame larger than the kernel default
    (net.core.rmem_default, 208 KiB) overflowed it: the first exposure after every (re)connect lost its tail and
    was an error verdict (seen on the plain socket: about one start in two). Aravis does not expose the socket, so
    it is found by its local port among this process's file descriptors; the kernel caps the size at
    net.core.rmem_max (README, Industrial cameras). Best effort: without /proc the AUTO mode still applies.
    """
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") not in inodes:
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:  # a duplicate: closing it leaves Aravis' socket open
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError:
            continue


def _io(exc: GLib.Error) -> Exception:
    """A GLib error from the device as CameraIOError when it is a transport failure, else unchanged."""
    if exc.domain == GLib.quark_to_string(Aravis.DeviceError.quark()) and exc.code in {int(c) for c in _IO_ERRORS}:
        return CameraIOError(exc.message)
    return exc


class AravisNodes:
    """NodeMap over an ArvDevice."""

    def __init__(self, device: Any) -> None:
        self._dev = device
        self._names: list[str] | None = None

    def kind(self, name: str) -> NodeKind | None:  # noqa: D102 - see NodeMap
        node = self._dev.get_feature(name)
        if node is None:
            return None
        try:
            if not (node.is_implemented() and node.is_available()):
                return None
        except GLib.Error:
            return None
        return next((kind for cls, kind in _KINDS if isinstance(node, cls)), None)

    def writable(self, name: str) -> bool:  # noqa: D102
        node = self._dev.get_feature(name)
        return node is not None and node.get_actual_access_mode() in _WRITABLE and not node.is_locked()

    def get(self, name: str) -> Value:  # noqa: D102
        kind = self.kind(name)
        if kind == "boolean":
            return bool(self._dev.get_boolean_feature_value(name))
        if kind == "integer":
            return int(self._dev.get_integer_feature_value(name))
        if kind == "float":
            return float(self._dev.get_float_feature_value(name))
        return str(self._dev.get_string_feature_value(name))

    def set(self, name: str, value: Value) -> None:  # noqa: D102
        kind = self.kind(name)
        try:
            if kind == "boolean":
                self._dev.set_boolean_feature_value(name, bool(value))
            elif kind == "integer":
                self._dev.set_integer_feature_value(name, int(value))
            elif kind == "float":
                self._dev.set_float_feature_value(name, float(value))
            else:
                self._dev.set_string_feature_value(name, str(value))
        except GLib.Error as exc:
            raise _io(exc) from None

    def bounds(self, name: str) -> tuple[float, float, float | None]:  # noqa: D102
        if self.kind(name) == "integer":
            lo, hi = self._dev.get_integer_feature_bounds(name)
            return lo, hi, self._dev.get_integer_feature_increment(name)
        lo, hi = self._dev.get_float_feature_bounds(name)
        return lo, hi, None

    def entries(self, name: str) -> list[str]:  # noqa: D102
        return list(self._dev.dup_available_enumeration_feature_values_as_strings(name))

    def execute(self, name: str) -> None:  # noqa: D102
        try:
            self._dev.execute_command(name)
        except GLib.Error as exc:
            raise _io(exc) from None

    def names(self) -> list[str]:  # noqa: D102
        if self._names is None:
            xml, _size = self._dev.get_genicam_xml()
            self._names = sorted(set(re.findall(r'\bName="([A-Za-z_][A-Za-z0-9_]*)"', xml or "")))
        return self._names


class AravisConnection:
    """One opened Aravis camera (see Connection)."""

    def __init__(self, camera: Any, info: CameraInfo, *, packet_socket: bool) -> None:
        self.info = info
        self.lost: str | None = None
        self._cam = camera
        self._dev = camera.get_device()
        self.nodes = AravisNodes(self._dev)
        self._gv = bool(camera.is_gv_device())
        self.short_frame_ids = self._gv  # GigE Vision 1.x block ids are 16-bit
        self._stream: Any = None
        self._handler = self._dev.connect("control-lost", self._on_control_lost)
        if self._gv and not packet_socket:
            self._dev.set_stream_options(Aravis.GvStreamOption.PACKET_SOCKET_DISABLED)

    def _on_control_lost(self, _device: Any) -> None:  # Aravis' heartbeat thread
        self.lost = "control channel lost (the camera stopped answering: unplugged, powered off or network down)"

    def negotiate_packet_size(self) -> int | None:  # noqa: D102
        return int(self._cam.gv_auto_packet_size()) if self._gv else None

    def start(self, buffers: int) -> None:  # noqa: D102
        stream = self._cam.create_stream(None, None)
        if stream is None:
            msg = "Aravis could not create the stream"
            raise RuntimeError(msg)
        payload = self._cam.get_payload()
        if self._gv:
            stream.set_property("socket-buffer", Aravis.GvStreamSocketBuffer.AUTO)
            _grow_receive_buffer(stream.get_port(), payload + _PROTOCOL_OVERHEAD)
        for _ in range(buffers):
            stream.push_buffer(Aravis.Buffer.new_allocate(payload))
        self._stream = stream
        self._cam.start_acquisition()

    def grab(self, timeout: float) -> Exposure | None:  # noqa: D102
        buf = self._stream.timeout_pop_buffer(max(1, int(timeout * 1e6)))
        if buf is None:
            return None
        try:
            received, received_ts = time.monotonic(), time.time()
            status = buf.get_status()
            stamp = buf.get_timestamp() or None
            if status != Aravis.BufferStatus.SUCCESS:
                why = f"incomplete buffer ({status.value_nick})"
                return Exposure(buf.get_frame_id(), stamp, received, received_ts, error=why)
            return Exposure(
                buf.get_frame_id(), stamp, received, received_ts,
                data=np.frombuffer(buf.get_data(), np.uint8),  # get_data() returns a copy: the buffer is reused
                width=buf.get_image_width(), height=buf.get_image_height(),
                pixel_format=pixels.name_of(buf.get_image_pixel_format()),
            )
        finally:
            self._stream.push_buffer(buf)

    def trigger(self) -> None:  # noqa: D102
        self._cam.software_trigger()

    def stop(self) -> None:  # noqa: D102
        if self._stream is None:
            return
        try:
            self._cam.stop_acquisition()
        except GLib.Error:
            pass  # the camera is gone: nothing to stop
        self._stream = None  # unref: Aravis stops the stream thread and frees the pool

    def close(self) -> None:  # noqa: D102
        self.stop()
        if self._dev is not None:
            self._dev.disconnect(self._handler)
        self._dev = self._cam = None  # unref: the device releases the control channel (GigE privilege)


class AravisDriver:
    """Cameras Aravis can see: GigE Vision on every interface, USB3 Vision (see README for permissions)."""

    name = "aravis"

    def __init__(self, *, packet_socket: bool = True) -> None:
        self.packet_socket = packet_socket

    def discover(self) -> list[CameraInfo]:  # noqa: D102
        Aravis.update_device_list()
        return [
            CameraInfo(
                driver=self.name, device_id=Aravis.get_device_id(i) or "", vendor=Aravis.get_device_vendor(i) or "",
                model=Aravis.get_device_model(i) or "", serial=Aravis.get_device_serial_nbr(i) or "",
                address=Aravis.get_device_address(i) or "", protocol=Aravis.get_device_protocol(i) or "",
            )
            for i in range(Aravis.get_n_devices())
        ]

    def open(self, uri: str) -> AravisConnection:  # noqa: D102
        camera = None
        if uri:  # Aravis' own lookup: device id, user id, vendor-serial, MAC or IP address (also beyond a router)
            try:
                camera = Aravis.Camera.new(uri)
            except GLib.Error:
                camera = None
        if camera is None:
            found = self.discover()
            match = next((c for c in found if c.matches(uri)), None)
            if match is None:
                seen = "; ".join(c.describe() for c in found) or "none"
                msg = f"no camera {uri!r} found by Aravis (cameras seen: {seen})" if uri else "no camera found"
                raise CameraNotFound(msg)
            try:
                camera = Aravis.Camera.new(match.device_id)
            except GLib.Error as exc:
                msg = f"cannot open {match.describe()}: {exc.message}"
                raise CameraNotFound(msg) from None
        dev = camera.get_device()
        if camera.is_gv_device() and not dev.is_controller():
            msg = f"camera {uri or camera.get_device_id()} is controlled by another application (viewer, daemon)"
            raise CameraIOError(msg)
        address = dev.get_device_address().to_string() if camera.is_gv_device() else ""
        info = CameraInfo(
            driver=self.name, device_id=camera.get_device_id() or "", vendor=camera.get_vendor_name() or "",
            model=camera.get_model_name() or "", serial=camera.get_device_serial_number() or "",
            address=address.rsplit(":", 1)[0], protocol="GigEVision" if camera.is_gv_device() else "USB3Vision",
        )
        return AravisConnection(camera, info, packet_socket=self.packet_socket)
