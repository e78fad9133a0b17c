"""`inspectd bench --bundle DIR [--frames N] [--json PATH]`: is the daemon's pipeline worth its threads?

One run, one bundle, three measurements on the same frames:

(a) **bare**: the backend alone, `submit`/`wait` on a preallocated input slot: no capture, no pre/post-processing,
    no publishing. The ceiling.
(b) **daemon**: `run_daemon` from an image-folder source to verdicts acknowledged by a real broker (a temporary
    Mosquitto on a free loopback port unless `--config` names one), timed by a subscriber on `<prefix>/result`.
(c) **naive**: one frame at a time: read the file, preprocess, infer, judge, publish QoS 1 and wait for the ack.

For each: throughput, end-to-end latency p50/p95/p99, CPU use (process CPU seconds / wall seconds, so 2.0 = two
cores busy), RSS at start and end, and peak RSS (`ru_maxrss`, which only grows). The ratios daemon/bare and
daemon/naive are the headline, with the precision the backend chose; bare CPU per frame / the daemon's steady-state
CPU per frame predicts daemon/bare on dedicated cores where the wall-clock ratios on a shared box cannot.
`--soak-s S` also runs the daemon on a looping folder for S seconds and samples RSS, to show memory stays flat.
Timings are reported, never asserted (tests only check the shape of the output).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.errors import ConfigError
from edge.log import get_logger
from edge.tools.local_broker import run_mosquitto

if TYPE_CHECKING:
    from edge.bundle import Bundle
    from edge.config import Config

log = get_logger(__name__)
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------------------------
# CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inspectd bench`."""
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder (model.onnx + bundle.json)")
    parser.add_argument("--frames", type=int, default=300, metavar="N", help="frames per measurement (default 300)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="daemon config for model/pipeline/mqtt settings (default: built-in defaults); "
                        "its [mqtt] broker is used when mqtt.enabled, else a temporary Mosquitto is started")
    parser.add_argument("--detector-label", default=None, metavar="L", help="label for this bundle in the output")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                        help="take frames from this folder (cycled to N) instead of synthetic frames")
    parser.add_argument("--soak-s", type=float, default=0.0, metavar="S",
                        help="also run the daemon on a looping folder for S seconds and sample RSS (memory flatness)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="run the three measurements round-robin K times; report medians (noisy, shared boxes)")
    parser.add_argument("--paced", type=float, default=0.0, metavar="F",
                        help="also run the daemon with the folder paced at F x the bare throughput (latency below "
                        "capacity), e.g. 0.7")


def run(args: argparse.Namespace) -> int:
    """Entry point of `inspectd bench`."""
    from edge import log as logging_setup

    logging_setup.configure("warning")
    if args.frames < 2:
        msg = f"--frames must be >= 2, got {args.frames}"
        raise ConfigError(msg)
    result = bench(
        args.bundle, frames=args.frames, config_path=args.config, label=args.detector_label,
        images=args.images, soak_s=args.soak_s, repeat=args.repeat, paced=args.paced,
    )
    print(format_report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# measurement helpers
def rss_mb() -> float:
    """Resident set size of this process now, MB (from /proc/self/statm)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return round(int(f.read().split()[1]) * _PAGE / 1e6, 1)
    except OSError:  # not Linux: fall back to the peak
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak RSS of this process so far, MB (ru_maxrss is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean of latency samples (seconds in, milliseconds out)."""
    if not seconds:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    a = np.asarray(seconds) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "mean": round(float(a.mean()), 3),
    }


@dataclass
class Meter:
    """Wall time, CPU time and RSS over one measured phase."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)
    rss0: float = field(default_factory=rss_mb)

    def result(self, frames: int, latencies: list[float], throughput: float | None = None) -> dict[str, Any]:
        """The phase's numbers; `throughput` overrides frames / wall (the daemon's steady-state rate)."""
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return {
            "frames": frames,
            "wall_s": round(wall, 3),
            "throughput_fps": round(throughput if throughput is not None else frames / max(wall, 1e-9), 2),
            "latency_ms": percentiles_ms(latencies),
            "cpu_cores": round(cpu / max(wall, 1e-9), 3),
            "cpu_ms_per_frame": round(cpu * 1000 / max(frames, 1), 3),
            "rss_start_mb": self.rss0,
            "rss_end_mb": rss_mb(),
            "peak_rss_mb": peak_rss_mb(),
        }


# ---------------------------------------------------------------------------------------------------------------
# frames and broker
def write_frames(folder: Path, n: int, height: int, width: int, images: Path | None = None) -> list[Path]:
    """N frame files in `folder`: the images of `images` cycled, or synthetic frames at the model input size.

    Synthetic frames are a mid-grey gradient with mild noise. Either way frames are stored as BMP, so that decoding
    (an artefact of the folder source: a camera delivers raw pixels) costs little next to inference.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if images is not None:
        sources = sorted(p for p in images.iterdir() if p.is_file() and cv2.haveImageReader(str(p)))
        if not sources:
            msg = f"--images {images}: no readable image files"
            raise ConfigError(msg)
        decoded = []
        for src in sources:
            image = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if image is None:
                msg = f"--images {images}: cannot read {src.name}"
                raise ConfigError(msg)
            decoded.append(image)
        out = []
        for i in range(n):
            dst = folder / f"{i:06d}.bmp"
            cv2.imwrite(str(dst), decoded[i % len(decoded)])
            out.append(dst)
        return out
    rng = np.random.default_rng(0)
    ramp = np.linspace(70, 110, width, dtype=np.float32)[None, :, None]
    out = []
    for i in range(n):
        noise = rng.normal(0, 4, (height, width, 3)).astype(np.float32)
        img = np.clip(ramp + noise, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.bmp"
        cv2.imwrite(str(path), img)
        out.append(path)
    return out


def _mqtt_client(config: Config, name: str) -> Any:
    """A connected paho client (MQTT 5) with the daemon's credentials/TLS settings, network loop running."""
    import paho.mqtt.client as mqtt

    cfg = config.mqtt
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"inspectd-bench-{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if cfg.protocol == "5" else mqtt.MQTTv311, transport=cfg.transport,
    )
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password.get_secret_value() if cfg.password else None)
    if cfg.tls:
        client.tls_set(ca_certs=str(cfg.tls_ca) if cfg.tls_ca else None)
    client.max_inflight_messages_set(cfg.max_inflight)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(cfg.host, cfg.port, keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        client.loop_stop()
        msg = f"bench: cannot connect to the broker {cfg.host}:{cfg.port}"
        raise ConfigError(msg)
    return client


class ResultSubscriber:
    """Records the arrival time of every message on `<prefix>/result` (QoS 0: adds no acks to the daemon's path)."""

    def __init__(self, config: Config) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.cpu_at: list[float] = []  # process CPU seconds at each arrival: the daemon's steady-state CPU per frame
        self._cond = threading.Condition()
        self.client = _mqtt_client(config, "sub")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(f"{config.mqtt.topic_prefix}/result", qos=0)
        if not subscribed.wait(10):
            msg = "bench: the broker did not confirm the result subscription"
            raise ConfigError(msg)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        with self._cond:
            self.arrivals.append((now, bytes(msg.payload)))
            self.cpu_at.append(time.process_time())
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until `n` results arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.arrivals) >= n, timeout=timeout)

    def close(self) -> None:
        """Disconnect and stop paho's network thread."""
        self.client.disconnect()
        self.client.loop_stop()


# ---------------------------------------------------------------------------------------------------------------
# the three measurements
def bench_bare(bundle: Bundle, config: Config, image: np.ndarray, frames: int) -> dict[str, Any]:
    """(a) backend only: submit/wait on one preallocated slot, `frames` images (batches of model.max_batch)."""
    from edge.backends import load_backend
    from edge.preprocess import preprocess

    backend = load_backend(bundle, config.model)
    try:
        slot = backend.acquire()
        n = backend.max_batch
        for i in range(n):
            preprocess(image, slot.input[i], color_order=bundle.meta.input.color_order)
        for _ in range(5):  # warm-up: first runs allocate and tune
            backend.submit(slot, n)
            backend.wait(slot)
        calls = max(1, frames // n)
        latencies: list[float] = []
        meter = Meter()
        for _ in range(calls):
            t0 = time.perf_counter()
            backend.submit(slot, n)
            backend.wait(slot)
            latencies.append(time.perf_counter() - t0)
        out = meter.result(calls * n, latencies)
        backend.release(slot)
        out["backend"] = backend.name
        out["precision"], out["precision_reason"] = precision_in_use(backend, bundle)
        return out
    finally:
        backend.close()


def precision_in_use(backend: Any, bundle: Bundle) -> tuple[str, str]:
    """(fp32 | int8 | fp16, why) of the graph `backend` runs: ONNX Runtime's start-up decision or the engine's."""
    decision = getattr(backend, "decision", None)
    if decision is not None:
        return decision.precision, decision.reason
    engine = bundle.meta.engine
    return (engine.precision, "the bundle's TensorRT engine") if engine else ("fp32", "")


def bench_daemon(config: Config, files: list[Path], folder: Path, fps: float = 0.0) -> dict[str, Any]:
    """(b) `run_daemon` on the folder; throughput and latency from arrivals at a subscriber (capture -> broker).

    With `fps` > 0 the folder is paced like a camera (frames may be skipped when the pipeline is behind), which
    measures latency at a line rate below capacity instead of with every queue full.
    """
    from edge.daemon import run_daemon

    n = len(files)
    config.source.kind = "folder"
    config.source.uri = str(folder)
    config.source.glob = "*"
    config.source.loop = False
    config.source.fps = fps
    subscriber = ResultSubscriber(config)
    try:
        meter = Meter()
        snapshot = run_daemon(config, max_frames=n, base_dir=folder)
        subscriber.wait_for(int(snapshot.get("published") or n), timeout=30)
        arrivals = list(subscriber.arrivals)
        cpu_at = list(subscriber.cpu_at)
    finally:
        subscriber.close()
    verdicts = [(t, json.loads(p)) for t, p in arrivals]
    latencies = [t - v["ts"] for t, v in verdicts]
    steady = None
    if len(arrivals) >= 2:
        span = arrivals[-1][0] - arrivals[0][0]
        steady = (len(arrivals) - 1) / max(span, 1e-9)
    out = meter.result(len(arrivals), latencies, steady)
    # Between the first and the last verdict: no start-up (bundle hashing, session creation) and no shutdown, so
    # this compares with bare's CPU per frame even for short runs (bare/daemon of the two predicts daemon/bare on
    # dedicated cores, where throughput is CPU-bound; wall-clock ratios on a shared box mostly measure the scheduler).
    out["cpu_ms_per_frame_steady"] = (
        round((cpu_at[-1] - cpu_at[0]) * 1000 / (len(cpu_at) - 1), 3) if len(cpu_at) >= 2 else None
    )
    out["published"] = snapshot.get("published")
    out["delivered"] = snapshot.get("delivered")
    out["exit_code"] = snapshot.get("exit_code")
    out["verdicts"] = snapshot.get("verdicts")
    out["frames_skipped"] = snapshot.get("frames_skipped")
    out["stage_latency_ms"] = {
        stage: {k: v.get(f"{k}_ms") for k in ("p50", "p95", "p99")}
        for stage, v in (snapshot.get("latency") or {}).items()
    }
    out["throughput_wall_fps"] = round(len(arrivals) / max(out["wall_s"], 1e-9), 2)  # incl. start-up
    return out


def bench_naive(bundle: Bundle, config: Config, files: list[Path]) -> dict[str, Any]:
    """(c) read -> preprocess -> infer -> judge -> publish QoS 1 and wait for the ack, one frame at a time."""
    from edge.backends import load_backend
    from edge.contract import THRESHOLD
    from edge.postprocess import find_regions, judge, mask_png
    from edge.preprocess import preprocess
    from edge.sources.files import _imread
    from edge.verdict import Verdict

    backend = load_backend(bundle, config.model)
    client = _mqtt_client(config, "naive")
    topic = f"{config.mqtt.topic_prefix}/result"
    model = {"name": bundle.meta.name, "hash": bundle.short_hash}
    pp = config.postprocess
    qos = max(1, config.mqtt.qos)

    def one(seq: int, path: Path) -> None:
        ts, mono = time.time(), time.monotonic()
        image, _why = _imread(path, config.source.max_pixels)
        if image is None:
            msg = f"bench: cannot read {path}"
            raise ConfigError(msg)
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        slot = backend.acquire()
        try:
            geometry = preprocess(
                image, slot.input[0], roi=config.source.roi, color_order=bundle.meta.input.color_order
            )
            backend.submit(slot, 1)
            outputs = backend.wait(slot)
            score = float(outputs.score[0])
            amap = outputs.anomaly_map[0, 0].copy()
            mask = outputs.mask[0, 0].copy()
        finally:
            backend.release(slot)
        regions = find_regions(mask, amap, geometry, min_area=pp.min_area, max_regions=pp.max_regions)
        kind = judge(score, regions)
        verdict = Verdict(
            seq=seq, frame_id=seq, ts=ts, outcome=kind, score=round(score, 6), threshold=THRESHOLD,
            latency_ms=round((time.monotonic() - mono) * 1000, 3), model=model, source=config.source.name,
            regions=regions,
        )
        client.publish(topic, verdict.to_json(), qos=qos).wait_for_publish(10)
        if config.mqtt.publish_mask == "always" or (config.mqtt.publish_mask == "fail" and kind == "fail"):
            client.publish(f"{config.mqtt.topic_prefix}/mask", mask_png(mask, geometry), qos=qos).wait_for_publish(10)

    try:
        for i in range(min(5, len(files))):  # warm-up, as for bare
            one(i, files[i])
        latencies: list[float] = []
        meter = Meter()
        for seq, path in enumerate(files):
            t0 = time.perf_counter()
            one(seq, path)
            latencies.append(time.perf_counter() - t0)
        return meter.result(len(files), latencies)
    finally:
        client.disconnect()
        client.loop_stop()
        backend.close()


def bench_soak(config: Config, folder: Path, seconds: float, sample_s: float = 5.0) -> dict[str, Any]:
    """The daemon on a looping folder for `seconds`, RSS sampled every `sample_s`: memory should stay flat."""
    from edge.daemon import run_daemon

    config.source.kind = "folder"
    config.source.uri = str(folder)
    config.source.loop = True
    config.source.fps = 0.0
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    t0 = time.monotonic()

    def sampler() -> None:
        while not stop.wait(min(sample_s, max(0.0, seconds - (time.monotonic() - t0)))):
            samples.append((round(time.monotonic() - t0, 1), rss_mb()))
            if time.monotonic() - t0 >= seconds:
                stop.set()

    thread = threading.Thread(target=sampler, daemon=True)
    rss0 = rss_mb()
    thread.start()
    snapshot = run_daemon(config, stop=stop, base_dir=folder)
    thread.join()
    verdicts = snapshot.get("verdicts") or {}
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "frames": sum(verdicts.values()),
        "rss_before_mb": rss0,
        "rss_first_sample_mb": samples[0][1] if samples else rss0,
        "rss_end_mb": samples[-1][1] if samples else rss_mb(),
        "rss_max_mb": max((s[1] for s in samples), default=rss0),
        "samples": samples,
    }


# ---------------------------------------------------------------------------------------------------------------
def bench(
    bundle_path: Path,
    *,
    frames: int = 300,
    config_path: Path | None = None,
    label: str | None = None,
    images: Path | None = None,
    soak_s: float = 0.0,
    repeat: int = 1,
    paced: float = 0.0,
) -> dict[str, Any]:
    """Run (a) bare, (b) daemon, (c) naive on one bundle and return the results with the ratios.

    With `repeat` > 1 the three run round-robin that many times (so drifting load on a shared box hits all three
    alike); each phase reports its median round and the ratios are medians of the per-round ratios. With `paced`
    > 0 the daemon also runs once with the folder paced at that fraction of the bare throughput (latency below
    capacity).
    """
    from edge.bundle import load_bundle
    from edge.config import load_config

    rss_start = rss_mb()
    config = load_config(config_path, base_dir=config_path.resolve().parent if config_path else None)
    bundle = load_bundle(bundle_path)
    config.model.bundle = bundle.path
    config.metrics.enabled = False  # no port to collide with a running daemon
    config.debug.enabled = False
    config.pipeline.mode = "continuous"
    h, w = bundle.meta.input.height, bundle.meta.input.width
    with tempfile.TemporaryDirectory(prefix="inspectd-bench-") as tmp:
        work = Path(tmp)
        files = write_frames(work / "frames", frames, h, w, images)
        first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
        if first is None:
            msg = f"bench: cannot read back the frame {files[0]} it wrote"
            raise ConfigError(msg)
        use_configured = config_path is not None and config.mqtt.enabled
        with _broker_for(config, work, use_configured=use_configured) as broker:
            config.mqtt.enabled = True
            config.mqtt.spool_dir = work / "spool"
            config.mqtt.prefix = f"inspectd-bench/{uuid.uuid4().hex[:8]}"
            config.mqtt.client_id = f"inspectd-bench-{uuid.uuid4().hex[:8]}"
            rounds: list[dict[str, dict[str, Any]]] = []
            for _ in range(max(1, repeat)):
                rounds.append({
                    "bare": bench_bare(bundle, config, first, frames),
                    "daemon": bench_daemon(config, files, work / "frames"),
                    "naive": bench_naive(bundle, config, files),
                })
            bare, daemon, naive = (_median_round(rounds, phase) for phase in ("bare", "daemon", "naive"))
            daemon_paced = None
            if paced > 0:
                rate = min(1000.0, paced * bare["throughput_fps"])  # source.fps allows up to 1000
                daemon_paced = bench_daemon(config, files, work / "frames", fps=rate)
                daemon_paced["source_fps"] = round(rate, 2)
            soak = bench_soak(config, work / "frames", soak_s) if soak_s > 0 else None
    result: dict[str, Any] = {
        "label": label or bundle.meta.name,
        "bundle": str(bundle.path),
        "detector": bundle.meta.detector,
        "input": [h, w],
        "backend": bare.get("backend"),
        "precision": bare.get("precision"),
        "precision_reason": bare.get("precision_reason"),
        "threads": config.model.threads,
        "max_batch": config.model.max_batch,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "frames": frames,
        "broker": broker,
        "bare": bare,
        "daemon": daemon,
        "naive": naive,
        "ratio_daemon_over_bare": _median_ratio(rounds, "bare"),
        "ratio_daemon_over_naive": _median_ratio(rounds, "naive"),
        "cpu_ratio_bare_over_daemon": _median_cpu_ratio(rounds),
        "daemon_p99_ms": daemon["latency_ms"]["p99"],
        "rounds": [{phase: r[phase]["throughput_fps"] for phase in r} for r in rounds],
        "rounds_cpu_ms_per_frame": [
            {"bare": r["bare"]["cpu_ms_per_frame"], "daemon": r["daemon"]["cpu_ms_per_frame_steady"]} for r in rounds
        ],
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }
    if daemon_paced is not None:
        result["daemon_paced"] = daemon_paced
    if soak is not None:
        result["soak"] = soak
    return result


def _median_round(rounds: list[dict[str, dict[str, Any]]], phase: str) -> dict[str, Any]:
    """The phase's result from the round with its median throughput (the lower middle one for even counts)."""
    ordered = sorted((r[phase] for r in rounds), key=lambda m: m["throughput_fps"])
    return ordered[(len(ordered) - 1) // 2]


def _median_ratio(rounds: list[dict[str, dict[str, Any]]], baseline: str) -> float:
    """Median over rounds of daemon throughput / `baseline` throughput in the same round."""
    ratios = [r["daemon"]["throughput_fps"] / max(r[baseline]["throughput_fps"], 1e-9) for r in rounds]
    return round(float(np.median(ratios)), 3)


def _median_cpu_ratio(rounds: list[dict[str, dict[str, Any]]]) -> float | None:
    """Median over rounds of bare CPU per frame / the daemon's steady-state CPU per frame."""
    ratios = [r["bare"]["cpu_ms_per_frame"] / r["daemon"]["cpu_ms_per_frame_steady"] for r in rounds
              if r["daemon"].get("cpu_ms_per_frame_steady")]
    return round(float(np.median(ratios)), 3) if ratios else None


@contextmanager
def _broker_for(config: Config, work: Path, *, use_configured: bool) -> Iterator[str]:
    """The configured broker (a --config with [mqtt] enabled), else a temporary Mosquitto on a free port."""
    if use_configured:
        yield f"{config.mqtt.host}:{config.mqtt.port} (configured)"
        return
    with run_mosquitto() as port:
        host = "127.0.0.1"
        config.mqtt.host = host
        config.mqtt.port = port
        config.mqtt.transport = "tcp"
        config.mqtt.tls = False
        config.mqtt.username = ""
        config.mqtt.password = None
        yield f"{host}:{port} (temporary mosquitto)"


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table `inspectd bench` prints."""
    lines = [
        f"inspectd bench: {r['label']} ({r['detector']}, input {r['input'][0]}x{r['input'][1]}, {r['backend']}, "
        f"{r['threads']} threads, {r['cpus']} CPUs, {r['frames']} frames, broker {r['broker']})",
        f"precision {r['precision']}" + (f" ({r['precision_reason']})" if r.get("precision_reason") else ""),
        f"{'':8} {'fps':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'cpu':>6} {'rss0 MB':>8} {'rss1 MB':>8}",
    ]
    for name in ("bare", "daemon", "naive"):
        m = r[name]
        lat = m["latency_ms"]
        lines.append(
            f"{name:8} {m['throughput_fps']:9.1f} {lat['p50']:8.2f} {lat['p95']:8.2f} {lat['p99']:8.2f} "
            f"{m['cpu_cores']:6.2f} {m['rss_start_mb']:8.1f} {m['rss_end_mb']:8.1f}"
        )
    lines.append(
        f"daemon/bare = {r['ratio_daemon_over_bare']:.3f}   daemon/naive = {r['ratio_daemon_over_naive']:.3f}   "
        f"({r['precision']})   CPU/frame bare/daemon = {r['cpu_ratio_bare_over_daemon']}   "
        f"peak RSS {r['peak_rss_mb']:.1f} MB"
    )
    if "daemon_paced" in r:
        p = r["daemon_paced"]
        lat = p["latency_ms"]
        lines.append(
            f"daemon paced at {p['source_fps']:.1f} fps: {p['throughput_fps']:.1f} fps, p50 {lat['p50']:.2f} ms, "
            f"p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms, {p['frames_skipped']} skipped"
        )
    if len(r.get("rounds", [])) > 1:
        lines.append("rounds (fps bare/daemon/naive): " + ", ".join(
            f"{x['bare']:.1f}/{x['daemon']:.1f}/{x['naive']:.1f}" for x in r["rounds"]
        ))
    if "soak" in r:
        s = r["soak"]
        lines.append(
            f"soak {s['seconds']:.0f} s, {s['frames']} frames: RSS {s['rss_first_sample_mb']:.1f} -> "
            f"{s['rss_end_mb']:.1f} MB (max {s['rss_max_mb']:.1f})"
        )
    return "\n".join(lines)
