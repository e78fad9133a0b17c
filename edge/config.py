"""Typed, validated configuration: `config.toml`, then `INSPECTD_SECTION__KEY` environment overrides, then secrets.

Every field has a default and a description; the description is the inline documentation in `config.toml`.
Unknown keys are refused (a typo must not silently fall back to a default on a production line). Secrets (MQTT
password, TLS key passphrase) are never read from the TOML: they come from the environment or from systemd
credentials in `$CREDENTIALS_DIRECTORY`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Jetson (JetPack 6) ships Python 3.10
    import tomli as tomllib

# Secrets: config key path -> systemd credential name. Refused in the TOML, read from env or credentials.
SECRETS: dict[tuple[str, str], str] = {
    ("mqtt", "password"): "mqtt_password",
    ("mqtt", "tls_key_password"): "mqtt_tls_key_password",
    ("source", "password"): "source_password",
}
_URI_PASSWORD = re.compile(r"//[^/@\s:]*:[^/@\s]*@")  # scheme://user:password@host


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    """[model]: which bundle runs, on which backend, and how."""

    bundle: Path = Field(Path("var/bundle"), description="Model bundle folder (model.onnx + bundle.json).")
    backend: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description='Inference backend: "onnxruntime" (CPU, or CUDA EP when installed) or "tensorrt".'
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description='"auto" times FP32 and the bundle\'s INT8 CPU flavour at start-up on this box (cached in '
        'state_dir) and runs the faster; "fp32" or "int8" force one.',
    )
    threads: int = Field(2, ge=1, le=256, description="ONNX Runtime intra-op threads.")
    state_dir: Path = Field(
        Path("var/state"),
        description=(
            "Decisions kept across restarts: precision.json, the FP32/INT8 start-up timings per CPU and bundle."
        ),
    )
    max_batch: int = Field(1, ge=1, le=64, description="Largest batch the backend is given (TensorRT profile max).")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="How long to wait for more queued frames to fill a batch (max_batch > 1)."
    )
    slots: int = Field(2, ge=2, le=3, description="TensorRT: ring of pinned-memory slots in flight at once.")
    cuda_graphs: bool = Field(
        True,
        description="TensorRT: capture copy+enqueue as CUDA graphs at load (batches padded to max_batch), "
        "falling back to plain enqueue if capture fails.",
    )
    cuda: Literal["cuda-python", "pycuda"] = Field(
        "cuda-python",
        description='TensorRT: CUDA library for memory, streams and graphs: "cuda-python" (NVIDIA\'s wheels) or '
        '"pycuda" (compiled against the CUDA toolkit).',
    )


_GENICAM_KEYS = (
    "driver", "cti", "pixel_format", "exposure_us", "gain_db", "frame_rate", "sensor_roi", "binning", "packet_size",
    "packet_delay_ns", "packet_socket", "buffers", "features", "trigger", "trigger_source", "trigger_activation",
)


class SourceConfig(Section):
    """[source]: where frames come from, and how camera loss is handled."""

    kind: Literal["folder", "video", "v4l2", "rtsp", "gstreamer", "genicam"] = Field(
        "folder",
        description='Frame source: "folder", "video", "v4l2", "rtsp" (also http), "gstreamer", "genicam" '
        "(GigE Vision / USB3 Vision / GenTL cameras, see [source] driver).",
    )
    uri: str = Field(
        "var/sample/stream",
        description="Folder path, video file, V4L2 device index or /dev/videoN, RTSP/HTTP URL, GStreamer pipeline; "
        'genicam: serial number, user id, IP address or device id ("" = the first camera found).',
    )
    name: str = Field("cam0", description="Camera name, carried in every verdict and log line.")
    glob: str = Field("*", description='folder: file name pattern, e.g. "*.png" (files are taken in sorted order).')
    loop: bool = Field(False, description="folder/video: start again at the end instead of stopping.")
    fps: float = Field(
        0.0, ge=0, le=1000, description="folder/video: pace frames at this rate (0 = as fast as inference)."
    )
    roi: tuple[int, int, int, int] | None = Field(
        None, description="Optional crop [x, y, w, h] in frame pixels, applied before resizing to the model input."
    )
    driver: Literal["aravis", "harvesters"] = Field(
        "aravis",
        description='genicam: "aravis" (libaravis: GigE Vision and USB3 Vision, no vendor SDK) or "harvesters" '
        "(a vendor's GenTL producer, source.cti).",
    )
    cti: Path | None = Field(
        None, description="genicam/harvesters: the GenTL producer (.cti); unset = every .cti in GENICAM_GENTL64_PATH."
    )
    pixel_format: str = Field(
        "",
        description='genicam: PixelFormat to set: Mono8, BayerRG8/GB8/GR8/BG8, RGB8, BGR8, RGBa8, BGRa8 (converted '
        'to BGR); "" = as the camera is (it must be one of these).',
    )
    exposure_us: float | None = Field(
        None, ge=0, description="genicam: ExposureTime in microseconds (ExposureAuto is turned off); unset = as is."
    )
    gain_db: float | None = Field(None, description="genicam: Gain in dB (GainAuto is turned off); unset = as is.")
    frame_rate: float | None = Field(
        None, gt=0, le=100000, description="genicam: AcquisitionFrameRate in frames/s (free-running); unset = as is."
    )
    sensor_roi: tuple[int, int, int, int] | None = Field(
        None, description="genicam: sensor region [x, y, w, h] (OffsetX/Y, Width/Height) read out by the camera."
    )
    binning: int | None = Field(
        None, ge=1, le=16, description="genicam: BinningHorizontal and BinningVertical; unset = as is."
    )
    packet_size: int = Field(
        0, ge=0, le=65535, description="genicam, GigE: GevSCPSPacketSize in bytes; 0 = negotiated at connect."
    )
    packet_delay_ns: int = Field(
        0, ge=0, le=10**9, description="genicam, GigE: inter-packet delay (GevSCPD), 0 = the camera's setting."
    )
    packet_socket: bool = Field(
        True,
        description="genicam/aravis, GigE: receive through a Linux packet socket where allowed (CAP_NET_RAW); "
        "false = always a plain UDP socket (cameras on loopback, some containers).",
    )
    buffers: int = Field(8, ge=2, le=256, description="genicam: buffers in the acquisition pool.")
    features: dict[str, bool | int | float | str] = Field(
        default_factory=dict,
        description="genicam: any other GenICam feature, applied in this order after the settings above, e.g. "
        '{ ExposureAuto = "Off", UserSetSelector = "UserSet1" }; a command set to true is executed.',
    )
    trigger: Literal["free", "software", "hardware"] = Field(
        "free",
        description='genicam: "free" (continuous), "software" (each trigger message fires TriggerSoftware; needs '
        'pipeline.mode = "triggered") or "hardware" (every exposure a trigger line starts is a part).',
    )
    trigger_source: str = Field("Line1", description='genicam, trigger = "hardware": TriggerSource, e.g. "Line1".')
    trigger_activation: str = Field(
        "RisingEdge", description='genicam, trigger = "hardware": TriggerActivation, e.g. "RisingEdge", "FallingEdge".'
    )
    stall_timeout_s: float = Field(5.0, gt=0, le=3600, description="No frame for this long = camera lost; reconnect.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay; doubles on each failure.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay (retries never stop).")
    max_pixels: int = Field(
        64_000_000, ge=1, le=1_000_000_000,
        description="Frames (and image files, checked from the header before decoding) with more pixels are an "
        "error verdict: a bad file must not take gigabytes of memory.",
    )
    username: str = Field(
        "",
        description="rtsp/http camera user; its password comes from INSPECTD_SOURCE__PASSWORD or the systemd "
        "credential source_password, never from this file (nor inside uri).",
    )
    password: SecretStr | None = Field(None, description="Secret: env or credentials only.", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _first_camera(cls, data: Any) -> Any:
        """A genicam source without a uri means the first camera found, not the sample folder."""
        if isinstance(data, dict) and data.get("kind") == "genicam" and "uri" not in data:
            data = {**data, "uri": ""}
        return data

    @model_validator(mode="after")
    def _check_backoff(self) -> SourceConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            msg = (
                f"source.reconnect_max_s ({self.reconnect_max_s}) must be >= "
                f"source.reconnect_min_s ({self.reconnect_min_s})"
            )
            raise ValueError(msg)
        if self.password is not None and not self.username:
            msg = "source.password is set but source.username is not"
            raise ValueError(msg)
        for key in ("roi", "sensor_roi"):
            box = getattr(self, key)
            if box is not None and (box[2] <= 0 or box[3] <= 0 or min(box[:2]) < 0):
                msg = f"source.{key} must be [x>=0, y>=0, w>0, h>0], got {list(box)}"
                raise ValueError(msg)
        if self.kind != "genicam":
            fields = type(self).model_fields
            camera_only = [
                k for k in _GENICAM_KEYS if getattr(self, k) != fields[k].get_default(call_default_factory=True)
            ]
            if camera_only:
                msg = f"source.{camera_only[0]} is a GenICam camera setting; it needs source.kind = 'genicam'"
                raise ValueError(msg)
        return self


class PipelineConfig(Section):
    """[pipeline]: continuous or triggered inspection, queues and shutdown."""

    mode: Literal["continuous", "triggered"] = Field(
        "continuous",
        description='"continuous": judge frames as they come, skipping (and counting) when behind; '
        '"triggered": one verdict per message on <prefix>/trigger, never skipped.',
    )
    queue_size: int = Field(4, ge=1, le=1024, description="Bounded queue length between pipeline stages.")
    trigger_timeout_s: float = Field(
        2.0, gt=0, le=60, description="triggered: a trigger with no frame within this time gets an error verdict."
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, le=300, description="On SIGTERM: time to drain in-flight frames and flush the spool before exit."
    )


class PostprocessConfig(Section):
    """[postprocess]: how the mask becomes defect regions."""

    min_area: int = Field(16, ge=0, description="Defect regions smaller than this (in model-input pixels) are dropped.")
    max_regions: int = Field(16, ge=0, le=256, description="At most this many regions (the largest) per verdict.")


class MqttConfig(Section):
    """[mqtt]: the broker, topics, security and the store-and-forward spool."""

    enabled: bool = Field(True, description="Publish verdicts over MQTT.")
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).")
    transport: Literal["tcp", "websockets", "unix"] = Field("tcp", description='"unix": host is a socket path.')
    protocol: Literal["5", "3.1.1"] = Field("5", description='MQTT protocol version: "5" or "3.1.1".')
    client_id: str = Field("", description='Client id; "" = inspectd-<line>-<station>.')
    line: str = Field("line1", description="Production line name, used in the default topic prefix.")
    station: str = Field("station1", description="Station name, used in the default topic prefix.")
    prefix: str = Field("", description='Topic prefix; "" = inspectd/<line>/<station>.')
    qos: int = Field(1, ge=0, le=2, description="QoS of verdicts on <prefix>/result.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay to the broker.")
    reconnect_max_s: float = Field(30.0, gt=0, le=3600, description="Longest reconnect delay to the broker.")
    username: str = Field(
        "",
        description="User name; the password comes from INSPECTD_MQTT__PASSWORD or the "
        "systemd credential mqtt_password, never from this file.",
    )
    password: SecretStr | None = Field(None, description="Secret: env or credentials only.", exclude=True)
    tls: bool = Field(False, description="Connect with TLS.")
    tls_ca: Path | None = Field(None, description="CA certificate (PEM) that signed the broker's certificate.")
    tls_cert: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    tls_key: Path | None = Field(
        None,
        description="Client key (PEM); its passphrase comes from INSPECTD_MQTT__TLS_KEY_PASSWORD "
        "or the credential mqtt_tls_key_password.",
    )
    tls_key_password: SecretStr | None = Field(None, description="Secret: env or credentials only.", exclude=True)
    publish_mask: Literal["fail", "always", "never"] = Field(
        "fail", description="Publish the mask PNG on <prefix>/mask for failed frames, every frame, or never."
    )
    stats_interval_s: float = Field(10.0, gt=0, le=3600, description="Period of <prefix>/stats messages.")
    max_inflight: int = Field(100, ge=1, le=65535, description="QoS>0 messages in flight before waiting for acks.")
    spool_dir: Path = Field(
        Path("var/spool"), description="Store-and-forward spool for verdicts while the broker is down."
    )
    spool_max_mb: float = Field(
        256.0, gt=0, description="Spool size cap; at the cap the oldest verdicts are dropped, loudly."
    )
    spool_fsync: Literal["always", "batch", "never"] = Field(
        "batch", description='What survives a power cut: "always": every verdict (SQLite synchronous FULL); "batch": '
        'all but the last <= 100 ms (NORMAL + a WAL fsync every 100 ms); "never": up to the OS (OFF).'
    )
    session_expiry_s: int = Field(
        3600, ge=0, le=4294967295,
        description="How long the broker keeps this daemon's session (its trigger subscription and the QoS 1 "
        "triggers sent meanwhile) while it is away; MQTT 3.1.1 keeps it until the broker forgets it.",
    )
    trigger_max_bytes: int = Field(
        65536, ge=256, le=16 * 1024 * 1024,
        description="Largest trigger payload read; a larger one still gets a verdict, with part_id null and a warning.",
    )
    require_subscriber: bool = Field(
        False,
        description="Keep a verdict in the spool, and resend it, while the broker says nobody subscribes to "
        "<prefix>/result (MQTT 5 reason 0x10); false: the broker's acknowledgement is delivery.",
    )

    @property
    def topic_prefix(self) -> str:
        """The effective prefix: `prefix`, or inspectd/<line>/<station>."""
        return self.prefix or f"inspectd/{self.line}/{self.station}"

    @model_validator(mode="after")
    def _check(self) -> MqttConfig:
        if self.password is not None and not self.username:
            msg = "mqtt.password is set but mqtt.username is not"
            raise ValueError(msg)
        if (self.tls_cert is None) != (self.tls_key is None):
            msg = "mqtt.tls_cert and mqtt.tls_key must be set together"
            raise ValueError(msg)
        if self.prefix.endswith("/") or "#" in self.prefix or "+" in self.prefix:
            msg = f"mqtt.prefix must not end with '/' or contain wildcards, got {self.prefix!r}"
            raise ValueError(msg)
        return self


class DebugConfig(Section):
    """[debug]: the ZeroMQ stream for `inspectd view`."""

    enabled: bool = Field(False, description="Publish frames + heatmaps for `inspectd view` over ZeroMQ.")
    bind: str = Field("tcp://127.0.0.1:5556", description="ZeroMQ PUB endpoint. Loopback unless you mean otherwise.")
    fps: float = Field(5.0, gt=0, le=120, description="Most debug frames per second sent.")
    hwm: int = Field(
        4, ge=1, le=1000, description="ZeroMQ send high-water mark: a slow viewer loses frames, not speed."
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of debug frames.")
    curve_secret_key: Path | None = Field(
        None, description="CURVE server secret key file (zmq.auth format); required when bind is not loopback."
    )
    curve_clients_dir: Path | None = Field(None, description="Folder of allowed client public keys for CURVE.")


class MetricsConfig(Section):
    """[metrics]: the Prometheus endpoint."""

    enabled: bool = Field(True, description="Serve Prometheus metrics over HTTP.")
    host: str = Field("127.0.0.1", description="Metrics bind address; loopback unless configured.")
    port: int = Field(9108, ge=1, le=65535, description="Metrics HTTP port.")


class LogConfig(Section):
    """[log]: level and format."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description='"auto": JSON lines when stderr is not a terminal, coloured console when it is.'
    )


class Config(BaseSettings):
    """The whole daemon configuration. Sections are TOML tables."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="INSPECTD_", env_nested_delimiter="__", validate_assignment=True
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment first, so INSPECTD_SECTION__KEY overrides what the TOML (passed as init kwargs) says."""
        return (env_settings, init_settings)


def load_config(path: Path | str | None = None, *, base_dir: Path | None = None) -> Config:
    """Read `path` (or only defaults + env when None), apply env overrides and secrets, and validate.

    Relative paths are resolved against `base_dir`, by default the config file's folder (the current directory when
    there is no file), as an operator running `inspectd run --config /etc/inspectd/config.toml` from anywhere
    expects: paths relative to where the file is, as README.md and config.toml say.

    Raises:
        ConfigError: one line per problem, each naming the key path, e.g. `mqtt.port: must be 1..65535, got 70000`.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            msg = f"config file {path} not found"
            raise ConfigError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"config file {path} is not valid TOML: {exc}"
            raise ConfigError(msg) from None
    for (section, key), cred in SECRETS.items():
        if key in data.get(section, {}):
            env = f"INSPECTD_{section.upper()}__{key.upper()}"
            msg = f"{section}.{key} must not be in the config file; set {env} or the systemd credential {cred}"
            raise ConfigError(msg)
    uri = data.get("source", {}).get("uri")
    if isinstance(uri, str) and _URI_PASSWORD.search(uri):
        msg = (
            "source.uri must not carry a password in the config file: put the user in source.username and the "
            "password in INSPECTD_SOURCE__PASSWORD or the systemd credential source_password"
        )
        raise ConfigError(msg)
    try:
        config = Config(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config)) from None
    _read_credentials(config)
    if base_dir is None:
        base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    _resolve_paths(config, base_dir)
    return config


def _read_credentials(config: Config) -> None:
    """Fill secrets not given by env from `$CREDENTIALS_DIRECTORY/<name>` (systemd LoadCredential=)."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        return
    for (section, key), cred in SECRETS.items():
        part = getattr(config, section)
        file = Path(cred_dir) / cred
        if getattr(part, key) is None and file.is_file():
            value = file.read_text(encoding="utf-8").rstrip("\n")
            if value:  # an empty file means "not set": the unit's LoadCredential= fails on a missing file
                try:
                    setattr(part, key, SecretStr(value))
                except ValidationError as exc:
                    raise ConfigError(format_validation_error(exc, type(part))) from None


def _resolve_paths(config: Config, base: Path) -> None:
    for section in (config.model, config.source, config.mqtt, config.debug):
        for name, value in section:
            if isinstance(value, Path) and not value.is_absolute():
                setattr(section, name, base / value)


def format_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line per error: `key.path: rule, got value`, with numeric ranges spelled `lo..hi`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{loc}: unknown key (check the spelling against config.toml)")
            continue
        if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
            lo, hi = _bounds(model, err["loc"])
            lines.append(f"{loc}: must be {lo}..{hi}, got {got}")
            continue
        if kind == "literal_error":
            lines.append(f"{loc}: must be one of {err['ctx']['expected']}, got {got!r}")
            continue
        reason = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {reason}" + (f", got {got!r}" if kind != "value_error" and got is not None else ""))
    return "invalid config:\n  " + "\n  ".join(lines)


def _bounds(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Look up a field's numeric bounds by its location, for messages like `must be 1..65535`."""
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            break
        info = fields[part]
        model = info.annotation  # type: ignore[assignment]
    lo: Any = "-inf"
    hi: Any = "inf"
    for meta in getattr(info, "metadata", []):
        lo = getattr(meta, "ge", getattr(meta, "gt", lo))
        hi = getattr(meta, "le", getattr(meta, "lt", hi))
    return str(lo), str(hi)


def effective_toml(config: Config) -> str:
    """The effective config as TOML text, secrets shown as `***` when set (for `inspectd config check`)."""
    out: list[str] = []
    for section_name in Config.model_fields:
        section = getattr(config, section_name)
        out.append(f"[{section_name}]")
        for key in type(section).model_fields:
            value = getattr(section, key)
            if isinstance(value, SecretStr):
                out.append(f'{key} = "***"  # secret, from env or credentials')
                continue
            if isinstance(value, str):
                value = _URI_PASSWORD.sub(lambda m: m.group(0).split(":", 1)[0] + ":***@", value)
            if value is None:
                if (section_name, key) in SECRETS:
                    out.append(f"# {key}: not set")
                else:
                    out.append(f"# {key} = (unset)")
                continue
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
