"""Apply `[source]`'s camera settings to a GenICam node map at connect, and read back what the camera made of them.

Settings are written in an order that works on SFNC cameras: pixel format, binning, sensor ROI (offsets to 0 first,
so the new width fits), transport (packet size and delay), trigger, frame rate, exposure, gain, then
`features = {...}` in the file's order (last, so they can override anything above). Every value is checked against
the camera's own range, increment or enumeration before it is written: Aravis writes an out-of-range float
unchecked, and a camera that clamps silently would inspect with other settings than the config says. A feature that
does not exist, is read-only, or has a value out of range raises CameraConfigError, which stops start-up with exit 2
and the camera's allowed values.
"""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Literal, NoReturn, Protocol

from edge.errors import CameraConfigError, SourceError
from edge.sources import pixels

if TYPE_CHECKING:
    from edge.config import SourceConfig

Value = bool | int | float | str


class CameraIOError(SourceError):
    """The camera did not answer (timeout, link down, controlled by another application): an outage, not a config error.

    NodeMap implementations raise it for transport failures, so a setting is never blamed for them.
    """
NodeKind = Literal["integer", "float", "enumeration", "boolean", "string", "command"]


class NodeMap(Protocol):
    """GenICam feature access, the same for every driver (GenApi through harvesters, Aravis' own GenICam engine)."""

    def kind(self, name: str) -> NodeKind | None:
        """The node's interface, or None when the camera has no implemented, available node of that name."""
        ...

    def writable(self, name: str) -> bool:
        """Whether the node can be written now (not read-only, not locked while streaming)."""
        ...

    def get(self, name: str) -> Value:
        """The node's current value (enumerations as their entry name)."""
        ...

    def set(self, name: str, value: Value) -> None:
        """Write the node (enumerations by entry name)."""
        ...

    def bounds(self, name: str) -> tuple[float, float, float | None]:
        """(min, max, increment or None) of an integer or float node, as the camera reports them now."""
        ...

    def entries(self, name: str) -> list[str]:
        """The enumeration entries available now."""
        ...

    def execute(self, name: str) -> None:
        """Execute a command node."""
        ...

    def names(self) -> list[str]:
        """Every feature name the camera describes (for "did you mean" hints)."""
        ...


def _fmt(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Writer:
    """Checks and writes values on one camera, remembering what it wrote for the read-back."""

    def __init__(self, nodes: NodeMap, camera: str) -> None:
        self.nodes = nodes
        self.camera = camera
        self.written: list[str] = []

    def refuse(self, key: str, why: str) -> NoReturn:
        """Raise the CameraConfigError naming the config key and this camera."""
        msg = f"{key}: {why} (camera {self.camera})"
        raise CameraConfigError(msg)

    def absent(self, key: str, name: str) -> NoReturn:
        """The camera has no node `name`: say so, with the closest names it does have."""
        close = difflib.get_close_matches(name, self.nodes.names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        self.refuse(key, f"the camera has no feature {name!r}{hint}")

    def write_first(self, key: str, names: tuple[str, ...], value: Value, missing: str = "") -> None:
        """Write the first of `names` the camera has: the SFNC name, then older GigE names (`...Abs`).

        Raises:
            CameraConfigError: the camera has none of them (`missing` says why, else the first name is reported).
        """
        name = next((n for n in names if self.nodes.kind(n) is not None), None)
        if name is None:
            if missing:
                self.refuse(key, missing)
            self.absent(key, names[0])
        self.write(key, name, value)

    def write(self, key: str, name: str, value: Value) -> None:
        """Check `value` against the node's kind and range, then write it.

        Raises:
            CameraConfigError: no such node, read-only, wrong type, out of range, not an entry, or refused.
        """
        kind = self.nodes.kind(name)
        if kind is None:
            self.absent(key, name)
        if kind == "command":
            if value is not True:
                self.refuse(key, f"{name} is a command: set it to true to execute it at connect")
            self._apply(key, name, lambda: self.nodes.execute(name))
            return
        if not self.nodes.writable(name):
            self.refuse(key, f"{name} is read-only on this camera now")
        value = self._check(key, name, kind, value)
        self._apply(key, name, lambda: self.nodes.set(name, value))
        if name not in self.written:
            self.written.append(name)

    def _check(self, key: str, name: str, kind: NodeKind, value: Value) -> Value:
        shown = f"{key} = {value!r}"
        if kind == "enumeration":
            entries = self.nodes.entries(name)
            if str(value) not in entries:
                self.refuse(shown, f"{name} must be one of {', '.join(entries)}")
            return str(value)
        if kind == "boolean":
            if not isinstance(value, bool):
                self.refuse(shown, f"{name} is a boolean: true or false")
            return value
        if kind == "string":
            return str(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.refuse(shown, f"{name} is a number ({kind})")
        lo, hi, inc = self.nodes.bounds(name)
        if kind == "integer":
            if value != int(value):
                self.refuse(shown, f"{name} is an integer")
            value = int(value)
        step = f" in steps of {_fmt(inc)}" if inc and kind == "integer" and inc > 1 else ""
        if not lo <= value <= hi:
            self.refuse(shown, f"out of range: {name} must be {_fmt(lo)}..{_fmt(hi)}{step}")
        if step and inc and (value - lo) % inc:
            self.refuse(shown, f"{name} must be {_fmt(lo)}..{_fmt(hi)}{step}")
        return value

    def _apply(self, key: str, name: str, action: object) -> None:
        try:
            action()  # type: ignore[operator]
        except CameraIOError:
            raise  # the camera is gone or busy, not refusing the value: an outage, retried
        except Exception as exc:  # noqa: BLE001 - the driver's own error, whatever its type, is the reason
            self.refuse(key, f"the camera refused {name}: {exc}")

    def ensure(self, key: str, name: str, value: Value) -> None:
        """Write a value a setting implies (AcquisitionMode, ExposureAuto Off, ...) if the camera has it and differs.

        A read-only node that already has the value is fine.
        """
        if self.nodes.kind(name) is None:
            return
        if self.nodes.get(name) == value:
            if name not in self.written:
                self.written.append(name)
            return
        self.write(key, name, value)


def apply_settings(nodes: NodeMap, config: SourceConfig, camera: str) -> dict[str, Value]:
    """Write `config`'s camera settings and features; return {node: value read back} for everything written.

    Raises:
        CameraConfigError: a setting the camera does not have, or a value outside what it allows (exit 2).
    """
    w = Writer(nodes, camera)
    _pixel_format(w, config)
    if config.binning is not None:
        for name in ("BinningHorizontal", "BinningVertical"):
            w.write("source.binning", name, config.binning)
    if config.sensor_roi is not None:
        x, y, width, height = config.sensor_roi
        for name in ("OffsetX", "OffsetY"):
            if nodes.kind(name) is not None and nodes.writable(name):
                nodes.set(name, 0)
        w.write("source.sensor_roi", "Width", width)
        w.write("source.sensor_roi", "Height", height)
        w.write("source.sensor_roi", "OffsetX", x)
        w.write("source.sensor_roi", "OffsetY", y)
    if config.packet_size:
        w.write("source.packet_size", "GevSCPSPacketSize", config.packet_size)
    if config.packet_delay_ns:
        _packet_delay(w, config.packet_delay_ns)
    _trigger(w, config)
    if config.frame_rate is not None:
        for enable in ("AcquisitionFrameRateEnable", "AcquisitionFrameRateEnabled"):
            w.ensure("source.frame_rate", enable, True)
        w.write_first("source.frame_rate", ("AcquisitionFrameRate", "AcquisitionFrameRateAbs"), config.frame_rate)
    if config.exposure_us is not None:
        w.ensure("source.exposure_us", "ExposureAuto", "Off")
        w.write_first("source.exposure_us", ("ExposureTime", "ExposureTimeAbs"), config.exposure_us)
    if config.gain_db is not None:
        w.ensure("source.gain_db", "GainAuto", "Off")
        raw = " (it has GainRaw, in raw units, not dB: set features.GainRaw)" if nodes.kind("GainRaw") else ""
        w.write_first("source.gain_db", ("Gain", "GainAbs"), config.gain_db, f"the camera has no Gain in dB{raw}")
    for name, value in config.features.items():
        w.write(f"source.features.{name}", name, value)
    return {name: nodes.get(name) for name in w.written}


def _pixel_format(w: Writer, config: SourceConfig) -> None:
    """Set (or check) an 8-bit pixel format inspectd converts; the camera's own list when it is not one."""
    if w.nodes.kind("PixelFormat") is None:
        w.absent("source.pixel_format", "PixelFormat")
    usable = [e for e in w.nodes.entries("PixelFormat") if e in pixels.FORMATS]
    if config.pixel_format:
        if config.pixel_format not in pixels.FORMATS:
            w.refuse(f"source.pixel_format = {config.pixel_format!r}",
                          f"inspectd converts {', '.join(pixels.SUPPORTED)}; this camera offers {', '.join(usable)}")
        w.write("source.pixel_format", "PixelFormat", config.pixel_format)
        return
    current = str(w.nodes.get("PixelFormat"))
    if current not in pixels.FORMATS:
        w.refuse("source.pixel_format", f"the camera streams {current}, which inspectd does not convert; "
                      f"set one of {', '.join(usable) or '(none: the camera has no 8-bit format)'}")
    w.written.append("PixelFormat")


def _packet_delay(w: Writer, delay_ns: int) -> None:
    """GevSCPD counts timestamp ticks; most cameras tick at 1 GHz, others say so in GevTimestampTickFrequency."""
    tick_hz = 1e9
    if w.nodes.kind("GevTimestampTickFrequency") is not None:
        tick_hz = float(w.nodes.get("GevTimestampTickFrequency")) or 1e9
    w.write("source.packet_delay_ns", "GevSCPD", round(delay_ns * tick_hz / 1e9))


def _trigger(w: Writer, config: SourceConfig) -> None:
    """FrameStart trigger: off for "free"; on, from Software or `trigger_source`, for the triggered modes."""
    nodes = w.nodes
    has_mode = nodes.kind("TriggerMode") is not None
    w.ensure("source.trigger", "AcquisitionMode", "Continuous")
    if config.trigger == "free":
        if has_mode:
            _select_frame_start(w)
            w.ensure("source.trigger", "TriggerMode", "Off")
        return
    key = f"source.trigger = {config.trigger!r}"
    if not has_mode:
        w.refuse(key, "the camera has no TriggerMode: it cannot be triggered; use source.trigger = 'free'")
    _select_frame_start(w)
    if config.trigger == "software":
        if nodes.kind("TriggerSoftware") != "command":
            w.absent(key, "TriggerSoftware")
        w.write(key, "TriggerSource", "Software")
    else:
        w.write("source.trigger_source", "TriggerSource", config.trigger_source)
        if nodes.kind("TriggerActivation") is not None or config.trigger_activation != "RisingEdge":
            w.write("source.trigger_activation", "TriggerActivation", config.trigger_activation)
    w.write(key, "TriggerMode", "On")


def _select_frame_start(w: Writer) -> None:
    w.ensure("source.trigger", "TriggerSelector", "FrameStart")
