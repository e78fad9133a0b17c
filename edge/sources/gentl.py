"""The `harvesters` driver: any vendor's GenTL producer (.cti) through harvesters, the GenICam consortium's consumer.

This is how Basler, FLIR/Teledyne, Allied Vision, IDS or Hikrobot cameras are reached with the vendor's own
transport layer: install the vendor SDK's GenTL producer and point `source.cti` (or GENICAM_GENTL64_PATH) at it.
Features go through GenApi (the `genicam` wheel). The `genicam` wheel ships `viky.cti`, a simulated producer with
three cameras, which the tests use.

harvesters hands back only complete buffers: an incomplete one is queued again inside `try_fetch` and reported
through its INCOMPLETE_BUFFER callback, without its frame id. The connection turns each into an Exposure with
`camera_frame_id = UNKNOWN_ID`, which the source counts once (it discounts the frame-id gap it leaves).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from genicam import genapi, gentl
from harvesters.core import Callback, Harvester, ImageAcquirer

from edge.errors import ConfigError
from edge.sources.features import CameraIOError, NodeKind, Value
from edge.sources.genicam import UNKNOWN_ID, CameraInfo, CameraNotFound, Exposure

_KINDS: dict[str, NodeKind] = {
    "IInteger": "integer", "IFloat": "float", "IEnumeration": "enumeration", "IBoolean": "boolean",
    "ICommand": "command", "IString": "string",
}
_RW, _WO, _NI = 4, 2, 0  # genicam.genapi.EAccessMode values
_POLL_MS = 20  # harvesters waits for a buffer in slices of this many milliseconds


def producers(cti: Path | None) -> list[Path]:
    """`cti`, or every .cti file in the folders of GENICAM_GENTL64_PATH (the GenTL standard's search path).

    Raises:
        ConfigError: no producer to load (exit 2).
    """
    if cti is not None:
        if not cti.is_file():
            msg = f"source.cti: GenTL producer {cti} not found"
            raise ConfigError(msg)
        return [cti]
    found = [
        path
        for folder in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep)
        if folder and Path(folder).is_dir()
        for path in sorted(Path(folder).glob("*.cti"))
    ]
    if not found:
        msg = (
            "source.driver = 'harvesters' needs a GenTL producer: set source.cti to the vendor's .cti file, or "
            "GENICAM_GENTL64_PATH to its folder (the genicam wheel's simulator is genicam/viky.cti)"
        )
        raise ConfigError(msg)
    return found


class GenTLNodes:
    """NodeMap over a GenApi node map (harvesters' `remote_device.node_map`)."""

    def __init__(self, node_map: Any) -> None:
        self._nm = node_map

    def _node(self, name: str) -> Any:
        if not self._nm.has_node(name):
            return None
        node = self._nm.get_node(name)
        return None if node.get_access_mode() == _NI else node

    def kind(self, name: str) -> NodeKind | None:  # noqa: D102 - see NodeMap
        node = self._node(name)
        return None if node is None else _KINDS.get(type(node).__name__)

    def writable(self, name: str) -> bool:  # noqa: D102
        node = self._node(name)
        return node is not None and node.get_access_mode() in (_RW, _WO)

    def get(self, name: str) -> Value:  # noqa: D102
        value = self._node(name).value
        return value if isinstance(value, (bool, int, float)) else str(value)

    def set(self, name: str, value: Value) -> None:  # noqa: D102
        try:
            self._node(name).value = value
        except (genapi.TimeoutException, gentl.IoException) as exc:
            raise CameraIOError(str(exc)) from None

    def bounds(self, name: str) -> tuple[float, float, float | None]:  # noqa: D102
        node = self._node(name)
        inc = node.inc if self.kind(name) == "integer" else None
        return node.min, node.max, inc

    def entries(self, name: str) -> list[str]:  # noqa: D102
        return list(self._node(name).symbolics)

    def execute(self, name: str) -> None:  # noqa: D102
        try:
            self._node(name).execute()
        except (genapi.TimeoutException, gentl.IoException) as exc:
            raise CameraIOError(str(exc)) from None

    def names(self) -> list[str]:  # noqa: D102
        return sorted(n.node.name for n in self._nm.nodes)


class _Incomplete(Callback):
    """Counts the incomplete buffers harvesters discards (its INCOMPLETE_BUFFER event)."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, context: object = None) -> None:
        self.count += 1


class GenTLConnection:
    """One camera opened through a GenTL producer (see Connection). Owns its Harvester, reset on close."""

    short_frame_ids = False  # GenTL frame ids are 64-bit

    def __init__(self, harvester: Harvester, acquirer: ImageAcquirer, info: CameraInfo) -> None:
        self.info = info
        self.lost: str | None = None
        self._h = harvester
        self._ia: Any = acquirer
        self.nodes = GenTLNodes(acquirer.remote_device.node_map)
        self._incomplete = _Incomplete()
        self._seen_incomplete = 0

    def negotiate_packet_size(self) -> int | None:
        """The producer negotiates its own transport; report GigE's packet size when the camera has the node."""
        if self.nodes.kind("GevSCPSPacketSize") is None:
            return None
        return int(self.nodes.get("GevSCPSPacketSize"))

    def start(self, buffers: int) -> None:  # noqa: D102
        self._ia.num_buffers = buffers
        self._ia.timeout_period_on_update_event_data_call = _POLL_MS
        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, self._incomplete)
        self._ia.start()

    def grab(self, timeout: float) -> Exposure | None:  # noqa: D102
        buf = self._ia.try_fetch(timeout=timeout)
        received, received_ts = time.monotonic(), time.time()
        if buf is None:
            if self._incomplete.count > self._seen_incomplete:
                self._seen_incomplete += 1
                return Exposure(UNKNOWN_ID, None, received, received_ts, error="incomplete buffer")
            return None
        with buf:  # queued again on exit
            component = buf.payload.components[0]
            try:
                stamp = int(buf.module.timestamp_ns) or None
            except Exception:  # noqa: BLE001 - producers without timestamps raise NotAvailableException
                stamp = None
            return Exposure(
                int(buf.module.frame_id), stamp, received, received_ts,
                data=np.array(component.data, dtype=np.uint8, copy=True).reshape(-1),
                width=int(component.width), height=int(component.height), pixel_format=str(component.data_format),
            )

    def trigger(self) -> None:  # noqa: D102
        self.nodes.execute("TriggerSoftware")

    def stop(self) -> None:  # noqa: D102
        if self._ia is not None and self._ia.is_acquiring():
            self._ia.stop()

    def close(self) -> None:  # noqa: D102
        if self._ia is not None:
            try:
                self.stop()
            finally:
                self._ia.destroy()
                self._ia = None
                self._h.reset()


def _info(device: Any) -> CameraInfo:
    def field(name: str) -> str:
        try:
            return str(getattr(device, name) or "")
        except Exception:  # noqa: BLE001 - producers raise NotAvailableException for fields they lack
            return ""

    return CameraInfo(driver="harvesters", device_id=field("id_"), vendor=field("vendor"), model=field("model"),
                      serial=field("serial_number"), user_id=field("user_defined_name"), protocol=field("tl_type"))


class GenTLDriver:
    """Cameras of the configured GenTL producer(s)."""

    name = "harvesters"

    def __init__(self, cti: Path | None) -> None:
        self.producers = producers(cti)

    def _harvester(self) -> Harvester:
        h = Harvester()
        for path in self.producers:
            h.add_file(str(path), check_existence=True)
        h.update()
        return h

    def discover(self) -> list[CameraInfo]:  # noqa: D102
        h = self._harvester()
        try:
            return [_info(d) for d in h.device_info_list]
        finally:
            h.reset()

    def open(self, uri: str) -> GenTLConnection:  # noqa: D102
        h = self._harvester()
        try:
            infos = [_info(d) for d in h.device_info_list]
            index = next((i for i, info in enumerate(infos) if info.matches(uri)), None)
            if index is None:
                seen = "; ".join(i.describe() for i in infos) or "none"
                what = f"no camera {uri!r}" if uri else "no camera"
                msg = f"{what} found by the GenTL producer(s) {', '.join(map(str, self.producers))} (seen: {seen})"
                raise CameraNotFound(msg)
            acquirer = h.create(index)
        except BaseException:
            h.reset()
            raise
        return GenTLConnection(h, acquirer, infos[index])
