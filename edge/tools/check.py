"""`inspectd check`: self-test a newly installed box before it goes on the line.

    inspectd check [--backend onnxruntime|tensorrt] [--bundle DIR] [--config PATH] [--frames 100]

One line per fact, in the order an installer checks them: Python, OpenCV's video I/O (GStreamer, FFmpeg, V4L2),
ONNX Runtime and its providers, TensorRT and CUDA (or "not available: why"), then, with --config, the GenICam
cameras its driver finds (model, serial, address, pixel formats) when the source is one, the camera (one frame
within a timeout, with what a GenICam camera read back) and the broker (TCP, then an MQTT CONNECT), and, with a
bundle, N frames through each available backend: throughput at batch 1 and the max batch, and TensorRT against ONNX
Runtime (largest map difference, verdict agreement). Exit 1 if anything that was asked for failed: the chosen
backend, the camera and broker of --config, the bundle; things not asked for are reported, never fatal.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.backends import Backend, load_backend
from edge.backends import cuda_mem as cm
from edge.backends.trt import version_key
from edge.bundle import Bundle, load_bundle
from edge.config import Config, ModelConfig, MqttConfig, load_config
from edge.contract import THRESHOLD, ModelOutputs
from edge.errors import InspectdError
from edge.log import configure
from edge.sources import SoftwareTriggered

Status = Literal["ok", "fail", "warn", "info", "skip"]
MAX_MAP_DIFF = 0.05  # on the normalised scale (1.0 = image threshold): FP16/INT8 engines differ a little
MIN_AGREEMENT = 0.99  # share of frames with the same pass/fail from TensorRT and ONNX Runtime


@dataclass(frozen=True)
class Item:
    """One line of the report."""

    name: str
    status: Status
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `inspectd check`."""
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt"), help="backend that must work "
                        "(default: model.backend of --config, else onnxruntime)")
    parser.add_argument("--bundle", type=Path, help="bundle to run frames through "
                        "(default: model.bundle of --config)")
    parser.add_argument("--config", type=Path, help="also check this config's camera and broker")
    parser.add_argument("--frames", type=int, default=100, help="frames per backend run (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="camera and broker timeout, s (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Print the report; 0 when everything asked for works, 1 otherwise."""
    configure(level="warning")  # the report is stdout; backends' info events would interleave with it
    config = load_config(args.config, base_dir=args.config.parent) if args.config else None
    backend = args.backend or (config.model.backend if config else "onnxruntime")
    items = system_items(backend, config.model.cuda if config else cm.DEFAULT_LAYER)
    if config is None:
        items.append(Item("camera", "skip", "no --config given"))
        items.append(Item("broker", "skip", "no --config given"))
    else:
        if config.source.kind == "genicam":
            items += genicam_items(config)
        items.append(camera_item(config, args.config.parent, args.timeout))
        items.append(broker_item(config.mqtt, args.timeout))
    bundle_dir = args.bundle or (config.model.bundle if config else None)
    if bundle_dir is None:
        items.append(Item("bundle", "skip", "no --bundle given"))
    else:
        model = config.model if config else ModelConfig.model_validate({})
        items += backend_items(Path(bundle_dir), backend, model, max(1, args.frames))
    failures = [i for i in items if i.status == "fail"]
    print(f"inspectd check (backend {backend})")
    for item in items:
        print(f"  {item.status:<5} {item.name:<26} {item.detail}")
    if failures:
        print(f"FAILED: {len(failures)} check(s) failed: {', '.join(i.name for i in failures)}")
        return 1
    print("OK: everything asked for works")
    return 0


# the box --------------------------------------------------------------------------------------------------------
def video_io(build_info: str) -> dict[str, bool]:
    """GStreamer / FFmpeg / V4L2 support from cv2.getBuildInformation()'s "Video I/O" section."""
    found = {"GStreamer": False, "FFmpeg": False, "V4L2": False}
    keys = {"gstreamer": "GStreamer", "ffmpeg": "FFmpeg", "v4l/v4l2": "V4L2"}
    for line in build_info.splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip().lower() in keys:
            found[keys[name.strip().lower()]] = value.strip().upper().startswith("YES")
    return found


def system_items(backend: str, cuda: str = cm.DEFAULT_LAYER) -> list[Item]:
    """Python, OpenCV, ONNX Runtime, TensorRT, the CUDA layer; a missing piece fails only if `backend` needs it."""
    import cv2

    items = [Item("Python", "ok", f"{platform.python_version()} ({sys.executable})")]
    io = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in video_io(cv2.getBuildInformation()).items())
    items.append(Item("OpenCV", "ok", f"{cv2.__version__}: {io}"))
    try:
        import onnxruntime as ort

        providers = ", ".join(ort.get_available_providers())
        items.append(Item("ONNX Runtime", "ok", f"{ort.__version__}, providers {providers}"))
    except ImportError as exc:
        items.append(Item("ONNX Runtime", "fail" if backend == "onnxruntime" else "warn", f"not available: {exc}"))
    trt_status: Status = "fail" if backend == "tensorrt" else "info"
    try:
        import tensorrt as trt  # type: ignore[import-not-found]

        if version_key(trt.__version__) < (10,):
            detail = f"{trt.__version__} is too old: inspectd needs TensorRT 10 or 11 (JetPack 6.1+)"
            items.append(Item("TensorRT", trt_status, detail))
        else:
            items.append(Item("TensorRT", "ok", str(trt.__version__)))
    except ImportError as exc:
        hint = " (needed for --backend tensorrt)" if backend == "tensorrt" else ""
        items.append(Item("TensorRT", trt_status, f"not available: {exc}{hint}"))
    items.append(cuda_item(cuda, trt_status))
    return items


def cuda_item(cuda: str, failure: Status) -> Item:
    """The model.cuda layer and its version, and the GPU it sees (status `failure` when either is missing)."""
    try:
        layer = cm.load_layer(cuda)
        version = layer.version()
    except InspectdError as exc:
        return Item("CUDA / GPU", failure, f"model.cuda = {cuda!r} not available: {exc}")
    try:
        gpu = layer.device_info(0)
    except InspectdError as exc:
        return Item("CUDA / GPU", failure, f"model.cuda = {cuda!r}: {version}; no usable GPU: {exc}")
    return Item("CUDA / GPU", "ok", f"model.cuda = {cuda!r}: {version}; driver CUDA {gpu.driver_version}; {gpu.name}, "
                f"compute capability {gpu.compute_capability}, {gpu.total_memory / 2**30:.1f} GiB")


# the config's camera and broker ---------------------------------------------------------------------------------
def camera_item(config: Config, base_dir: Path, timeout: float) -> Item:
    """Open the configured source and grab one frame within `timeout` (a live camera retries inside that time)."""
    from edge.sources import open_source
    from edge.sources.live import redact

    where = f"{config.source.kind} {redact(config.source.uri)}"
    try:
        source = open_source(config.source, base_dir)
    except InspectdError as exc:
        return Item("camera", "fail", f"{where}: {exc}")
    try:
        deadline = time.monotonic() + timeout
        software = source if isinstance(source, SoftwareTriggered) and config.source.trigger == "software" else None
        while (left := deadline - time.monotonic()) > 0:
            if software is not None:  # a software-triggered camera sends nothing until told to
                frame = software.fire() or software.exposure(left)
            else:
                frame = source.read(left)
            if frame is not None and frame.image is not None:
                h, w = frame.image.shape[:2]
                settings = getattr(source, "settings", None)  # GenICam: what the camera read back
                shown = "; " + ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else ""
                return Item("camera", "ok", f"{where}: got a {w}x{h} frame{shown}")
            if frame is not None:
                return Item("camera", "fail", f"{where}: {frame.error}")
            if source.finished:
                return Item("camera", "fail", f"{where}: no frames (empty folder or video?)")
        return Item("camera", "fail", f"{where}: no frame within {timeout:g} s")
    finally:
        source.close()


def genicam_items(config: Config) -> list[Item]:
    """Every camera the configured GenICam driver finds: model, serial, address and pixel formats."""
    from edge.sources.genicam import camera_formats, load_driver

    driver_name = config.source.driver
    try:
        driver = load_driver(config.source)
        cameras = driver.discover()
    except InspectdError as exc:
        return [Item("GenICam driver", "fail", str(exc))]
    if not cameras:
        return [Item("GenICam cameras", "warn", f"none found by {driver_name} (network, cabling, permissions?)")]
    items = []
    for i, info in enumerate(cameras):
        formats = camera_formats(driver, info)
        shown = ", ".join(formats) if isinstance(formats, list) else formats
        status: Status = "info" if isinstance(formats, list) else "warn"
        detail = f"{info.describe()}, id {info.device_id}, {info.protocol or driver_name}: pixel formats {shown}"
        items.append(Item(f"GenICam camera {i}", status, detail))
    return items


def broker_item(mqtt_cfg: MqttConfig, timeout: float) -> Item:
    """TCP connect, then an MQTT CONNECT with the config's credentials/TLS, both within `timeout`."""
    if not mqtt_cfg.enabled:
        return Item("broker", "skip", "mqtt.enabled = false")
    where = f"{mqtt_cfg.host}" + ("" if mqtt_cfg.transport == "unix" else f":{mqtt_cfg.port}")
    try:
        if mqtt_cfg.transport == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(mqtt_cfg.host)
        else:
            socket.create_connection((mqtt_cfg.host, mqtt_cfg.port), timeout=timeout).close()
    except OSError as exc:
        return Item("broker", "fail", f"{where}: TCP connection failed: {exc}")
    try:
        code = _mqtt_connect(mqtt_cfg, timeout)
    except Exception as exc:  # noqa: BLE001 - TLS and socket errors from paho: report, don't crash the check
        return Item("broker", "fail", f"{where}: MQTT connect failed: {type(exc).__name__}: {exc}")
    if code is None:
        return Item("broker", "fail", f"{where}: no CONNACK within {timeout:g} s")
    if code.is_failure:
        return Item("broker", "fail", f"{where}: broker refused the connection: {code}")
    return Item("broker", "ok", f"{where}: MQTT {mqtt_cfg.protocol} connect accepted{' (TLS)' if mqtt_cfg.tls else ''}")


def _mqtt_connect(cfg: MqttConfig, timeout: float) -> Any:
    """The CONNACK reason code, or None on timeout (paho 2.x, callback API version 2)."""
    import paho.mqtt.client as mqtt

    from edge.mqtt.connection import stop_loop

    protocol = mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"inspectd-check-{time.time_ns()}",
                         protocol=protocol, transport=cfg.transport)
    client.connect_timeout = timeout
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls:
        key_password = cfg.tls_key_password.get_secret_value() if cfg.tls_key_password else None
        client.tls_set(ca_certs=str(cfg.tls_ca) if cfg.tls_ca else None,
                       certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
                       keyfile=str(cfg.tls_key) if cfg.tls_key else None, keyfile_password=key_password)
    answer: list[Any] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        answer.append(reason_code)
        done.set()

    client.on_connect = on_connect
    client.connect(cfg.host, cfg.port, keepalive=max(5, int(timeout) + 5))
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        stop_loop(client)
    return answer[0] if answer else None


# the bundle through each backend --------------------------------------------------------------------------------
def sample_frames(n: int, height: int, width: int) -> np.ndarray:
    """`n` reproducible BGR frames: textured backgrounds, every other one with a bright blob (a "defect")."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(n, height, width, 3), dtype=np.uint8)
    for i in range(1, n, 2):
        y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
        images[i, y : y + max(2, height // 4), x : x + max(2, width // 4)] = 255
    return images


def _throughput(backend: Backend, images: np.ndarray, batch: int) -> tuple[float, ModelOutputs]:
    """Frames per second of `images` in batches of `batch` through the daemon's own submit/wait path.

    One `infer` over all frames keeps every slot in flight, as the pipeline does (one call per batch would wait
    for each before submitting the next, and under-report against trtexec). TensorRT captured its graphs at load;
    an untimed pass over four batches warms up allocators and caches first.
    """
    backend.infer(images[: batch * 4], batch)
    start = time.perf_counter()
    outputs = backend.infer(images, batch)
    return len(images) / (time.perf_counter() - start), outputs


def backend_items(bundle_dir: Path, asked: str, model: ModelConfig, frames: int) -> list[Item]:
    """Run `frames` frames through ONNX Runtime and (if asked or available) TensorRT; compare the two."""
    try:
        bundle = load_bundle(bundle_dir)
    except InspectdError as exc:
        return [Item("bundle", "fail", str(exc))]
    items = [Item("bundle", "ok", f"{bundle_dir}: {bundle.meta.detector} {bundle.meta.input.width}x"
                  f"{bundle.meta.input.height}, model.onnx {bundle.short_hash}"
                  + (f", engine {bundle.meta.engine.precision} TensorRT {bundle.meta.engine.tensorrt_version}"
                     if bundle.meta.engine else ", no TensorRT engine"))]
    names = ["onnxruntime"]
    if asked == "tensorrt" or (bundle.meta.engine is not None and importlib.util.find_spec("tensorrt")):
        names.append("tensorrt")
    images = sample_frames(frames, bundle.meta.input.height, bundle.meta.input.width)
    results: dict[str, ModelOutputs] = {}
    for name in names:
        item, outputs = _run_backend(bundle, name, model, images, failure="fail" if name == asked else "warn")
        items.append(item)
        if outputs is not None:
            results[name] = outputs
    if len(results) == 2:
        items.append(compare_item(results["tensorrt"], results["onnxruntime"]))
    return items


def _run_backend(bundle: Bundle, name: str, model: ModelConfig, images: np.ndarray,
                 failure: Status) -> tuple[Item, ModelOutputs | None]:
    config = model.model_copy(update={"backend": name, "bundle": bundle.path})
    if name == "tensorrt" and bundle.meta.engine is not None:  # the engine's profile, not the CPU setting
        config = config.model_copy(update={"max_batch": max(model.max_batch, bundle.meta.engine.max_batch)})
    try:
        backend = load_backend(bundle, config)
    except InspectdError as exc:
        return Item(name, failure, f"cannot load: {exc}"), None
    try:
        fps1, outputs = _throughput(backend, images, 1)
        detail = f"{len(images)} frames via {backend.name}: batch 1 {fps1:.1f} fps"
        if backend.max_batch > 1:
            fps_max, outputs = _throughput(backend, images, backend.max_batch)
            detail += f", batch {backend.max_batch} {fps_max:.1f} fps"
        return Item(name, "ok", detail), outputs
    except Exception as exc:  # noqa: BLE001 - an inference failure is a check result, not a crash
        return Item(name, failure, f"inference failed: {type(exc).__name__}: {exc}"), None
    finally:
        backend.close()


def compare_item(trt_out: ModelOutputs, ort_out: ModelOutputs) -> Item:
    """Largest anomaly-map difference and pass/fail agreement of TensorRT against ONNX Runtime."""
    diff = float(np.max(np.abs(trt_out.anomaly_map.astype(np.float32) - ort_out.anomaly_map)))
    same = int(np.sum((trt_out.score >= THRESHOLD) == (ort_out.score >= THRESHOLD)))
    n = len(ort_out.score)
    ok = diff <= MAX_MAP_DIFF and same >= MIN_AGREEMENT * n
    detail = (f"max map difference {diff:.4g} (limit {MAX_MAP_DIFF}), verdicts agree on {same}/{n} frames "
              f"(need {MIN_AGREEMENT:.0%})")
    return Item("TensorRT vs ONNX Runtime", "ok" if ok else "fail", detail)
