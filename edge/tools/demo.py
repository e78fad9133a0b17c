"""`inspectd demo`: the whole product end to end on one laptop, with nothing configured.

Steps (each prints one line; tool output goes to `<workdir>/logs/<step>.log`):

1. sample data: `inspectd dataset build` writes one texture category (real photographs from pip packages, defects
   implanted with exact masks); its test set is split into calibration images and a held-out stream.
2. train: `inspectd train` fits a detector on the good training images within a time budget (`--minutes`).
3. export + calibrate: `inspectd export` writes the bundle, `inspectd calibrate` sets thresholds from held-out good
   images (and defects). Steps 1-3 are skipped on a later run while `<workdir>/bundle/bundle.json` loads.
4. broker: an MQTT broker on 127.0.0.1:1883 is used when one answers; otherwise Mosquitto is started on a free
   loopback port with a throwaway config.
5. stream: a folder of good and defective frames in shuffled order, with the truth in `stream/truth.json`.
6. daemon: `run_daemon` (the same code as `inspectd run`) judges the stream with the debug stream on; an MQTT
   subscriber prints one line per verdict, and a debug-stream subscriber renders what `inspectd view` would show.
7. summary (printed, and `summary.json`) and `report.html` with the failed frames and their heatmaps.

The offline steps run as `python -m edge ...` subprocesses, so this process (like the daemon) never imports torch.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.bundle import Bundle, load_bundle
from edge.config import Config
from edge.contract import INPUT_NAME, OUTPUT_NAMES, ModelOutputs
from edge.errors import BundleError, InspectdError
from edge.log import configure as configure_logging
from edge.tools import render
from edge.tools.local_broker import free_port, mosquitto_binary, reachable, run_mosquitto

DEFAULT_CATEGORY = "brick"
DEFAULT_DETECTOR = "padim"
IMAGE_SIZE = 256  # side of the sample images written by the dataset builder
COUNTS = {"train": 60, "test_good": 40, "test_defective": 30}  # test split: half calibration, half stream
MAX_SHEET = 16  # failed frames on the failed.png contact sheet (the HTML report has them all)


class DemoError(InspectdError):
    """Raised when a demo step fails; the message names the step and its log file."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inspectd demo`."""
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"),
                        help="where everything goes (default var/demo)")
    parser.add_argument("--minutes", type=float, default=2.0, metavar="M",
                        help="training budget in minutes (default 2; the detector stops early when it converges)")
    parser.add_argument("--fresh", action="store_true", help="rebuild data, model and bundle even if a bundle exists")
    parser.add_argument("--category", default=DEFAULT_CATEGORY, help=f"sample category (default {DEFAULT_CATEGORY})")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help=f"detector to train (default {DEFAULT_DETECTOR})")
    parser.add_argument("--frames", type=int, default=60, metavar="N",
                        help="frames in the sample stream, cycling through the held-out images (default 60)")
    parser.add_argument("--fps", type=float, default=0.0,
                        help="pace the stream like a camera at this rate (default 0: as fast as the model goes)")
    parser.add_argument("--quiet", action="store_true", help="no line per verdict, only the summary")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                        help="auto: a broker on 127.0.0.1:1883, else Mosquitto, else the embedded amqtt broker "
                             "(pip install 'inspectd[demo]'); or force one of the last two")


class Paths:
    """Everything the demo writes, under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"  # dataset builder output, one MVTec-layout folder per category
        self.calib = root / "calib"  # calibration split: good/ and defects/{test,ground_truth}/
        self.ckpt = root / "model.pt"
        self.bundle = root / "bundle"
        self.stream = root / "stream"  # frame_NNNN.png + truth.json
        self.logs = root / "logs"
        self.spool = root / "spool"
        self.config = root / "demo.toml"
        self.report = root / "report.html"
        self.summary = root / "summary.json"


@dataclass(frozen=True)
class Truth:
    """What a stream frame really is."""

    file: str
    label: int  # 0 good, 1 defective
    defect_type: str
    origin: str  # the dataset file it was copied from


# steps ----------------------------------------------------------------------------------------------------------


def say(text: str) -> None:
    """One progress line, flushed at once (the demo is watched live)."""
    print(text, flush=True)


def run_tool(step: str, argv: list[str], paths: Paths) -> float:
    """Run `python -m edge ARGV` with output to logs/<step>.log; return seconds; DemoError with the log's tail."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_file = paths.logs / f"{step}.log"
    # The folder holding the `edge` package first on the path: the repo root for an editable install, so a
    # stale editable-install finder cannot shadow detectors/, export/ or calib/; harmless for a normal install.
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    start = time.monotonic()
    with log_file.open("w", encoding="utf-8") as fh:
        fh.write(f"$ inspectd {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "edge", *argv], stdout=fh, stderr=subprocess.STDOUT, env=env,
                              check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        msg = f"demo step {step!r} failed (exit {proc.returncode}) after {seconds:.0f} s; log {log_file}:\n{tail}"
        raise DemoError(msg)
    return seconds


def split_test(category: Path) -> tuple[list[Path], list[tuple[Path, Path | None, str]], list[Truth]]:
    """Split the test set: even-indexed images calibrate, odd-indexed ones form the stream pool.

    Returns (calibration good images, calibration defects as (image, mask, type), stream pool truths with origin).
    """
    from edge.evaluation.dataset import read_category

    cat = read_category(category)
    good = [s for s in cat.test if s.label == 0]
    bad = [s for s in cat.test if s.label == 1]
    calib_good = [s.path for s in good[0::2]]
    calib_bad = [(s.path, s.mask_path, s.defect_type) for s in bad[0::2]]
    pool = [Truth("", 0, "good", str(s.path)) for s in good[1::2]]
    pool += [Truth("", 1, s.defect_type, str(s.path)) for s in bad[1::2]]
    return calib_good, calib_bad, pool


def write_calibration_set(paths: Paths, good: list[Path], bad: list[tuple[Path, Path | None, str]]) -> None:
    """calib/good/*.png and an MVTec-style calib/defects/{test,ground_truth}/<type>/ for `inspectd calibrate`."""
    shutil.rmtree(paths.calib, ignore_errors=True)
    (paths.calib / "good").mkdir(parents=True)
    for p in good:
        shutil.copy2(p, paths.calib / "good" / p.name)
    for img, mask, kind in bad:
        (paths.calib / "defects" / "test" / kind).mkdir(parents=True, exist_ok=True)
        shutil.copy2(img, paths.calib / "defects" / "test" / kind / img.name)
        if mask is not None:
            (paths.calib / "defects" / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy2(mask, paths.calib / "defects" / "ground_truth" / kind / mask.name)


def load_existing(paths: Paths) -> Bundle | None:
    """The bundle of an earlier run, when it loads and its sample data is still there."""
    if not (paths.bundle / "bundle.json").is_file():
        return None
    try:
        bundle = load_bundle(paths.bundle)
    except BundleError as exc:
        say(f"      earlier bundle unusable ({exc}); rebuilding")
        return None
    return bundle


def prepare_model(paths: Paths, args: argparse.Namespace) -> tuple[Bundle, Path]:
    """Steps 1-3, or reuse: returns the calibrated bundle and the category folder."""
    category = paths.data / args.category
    bundle = None if args.fresh else load_existing(paths)
    if bundle is not None and not (category / "test").is_dir():
        bundle = None
    if bundle is not None:
        t = bundle.meta.thresholds
        say(f"[1-3] reusing bundle {paths.bundle} ({bundle.meta.detector}, {bundle.meta.input.width}x"
            f"{bundle.meta.input.height}, {t.method}); --fresh rebuilds it")
        return bundle, category
    for stale in (paths.bundle, paths.ckpt):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    say(f"[1/3] sample data: building category {args.category!r} from packaged real images ...")
    s = run_tool("dataset", ["dataset", "build", str(paths.data), "--categories", args.category,
                             "--size", str(IMAGE_SIZE), "--train", str(COUNTS["train"]),
                             "--test-good", str(COUNTS["test_good"]),
                             "--test-defective", str(COUNTS["test_defective"])], paths)
    calib_good, calib_bad, _ = split_test(category)
    write_calibration_set(paths, calib_good, calib_bad)
    say(f"      {COUNTS['train']} training images, {len(calib_good)} good + {len(calib_bad)} defective for "
        f"calibration, the rest held out for the stream ({s:.0f} s)")
    say(f"[2/3] training {args.detector} on the good images (budget {args.minutes:g} min, 2 CPU cores) ...")
    s = run_tool("train", ["train", "--detector", args.detector, "--data", str(category), "--out", str(paths.ckpt),
                           "--max-minutes", f"{args.minutes:g}"], paths)
    say(f"      trained in {s:.0f} s -> {paths.ckpt}")
    say("[3/3] exporting the ONNX bundle and calibrating thresholds on held-out images ...")
    s = run_tool("export", ["export", "--ckpt", str(paths.ckpt), "--out", str(paths.bundle), "--name",
                            f"demo-{args.category}-{args.detector}", "--datasets", str(paths.data)], paths)
    s += run_tool("calibrate", ["calibrate", "--bundle", str(paths.bundle), "--good", str(paths.calib / "good"),
                                "--defects", str(paths.calib / "defects"), "--no-int8"], paths)
    bundle = load_bundle(paths.bundle)
    t = bundle.meta.thresholds
    say(f"      bundle {paths.bundle} ({s:.0f} s): {t.method}; expected false rejects "
        f"{_pct(t.expected_false_reject_rate)}, escapes {_pct(t.expected_escape_rate)} on the calibration images")
    return bundle, category


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def write_stream(paths: Paths, category: Path, frames: int, seed: int = 7) -> list[Truth]:
    """stream/frame_NNNN.png cycling through the held-out pool in shuffled order; stream/truth.json says which is which.

    The daemon's folder source reads files in sorted order and numbers them from 0, so frame_id N is truth[N].
    """
    _, _, pool = split_test(category)
    if not pool:
        msg = f"no held-out test images in {category}/test; rebuild with --fresh"
        raise DemoError(msg)
    rng = random.Random(seed)
    order: list[Truth] = []
    while len(order) < frames:
        cycle = list(pool)
        rng.shuffle(cycle)
        order += cycle
    shutil.rmtree(paths.stream, ignore_errors=True)
    paths.stream.mkdir(parents=True)
    truths = []
    for i, t in enumerate(order[:frames]):
        name = f"frame_{i:04d}.png"
        shutil.copy2(t.origin, paths.stream / name)
        truths.append(Truth(name, t.label, t.defect_type, t.origin))
    (paths.stream / "truth.json").write_text(json.dumps([t.__dict__ for t in truths], indent=1) + "\n")
    return truths


# broker -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerInfo:
    """Where the demo's broker is and what it speaks."""

    host: str
    port: int
    protocol: str  # "5" or "3.1.1" (the embedded broker speaks 3.1.1 only)
    description: str


@contextlib.contextmanager
def local_broker(paths: Paths, choice: str = "auto") -> Iterator[BrokerInfo]:
    """A reachable broker: one already on 127.0.0.1:1883, else Mosquitto on a free port, else the embedded one.

    `choice` forces "mosquitto" or "embedded" (amqtt, installed with the `demo` extra).
    """
    if choice == "auto" and reachable("127.0.0.1", 1883):
        yield BrokerInfo("127.0.0.1", 1883, "5", "existing broker on 127.0.0.1:1883")
        return
    if choice in ("auto", "mosquitto") and mosquitto_binary() is not None:
        paths.logs.mkdir(parents=True, exist_ok=True)
        with run_mosquitto(log_path=paths.logs / "mosquitto.log") as port:
            yield BrokerInfo("127.0.0.1", port, "5", f"Mosquitto started by the demo on 127.0.0.1:{port}")
        return
    if choice in ("auto", "embedded") and importlib.util.find_spec("amqtt") is not None:
        with _embedded(paths) as port:
            yield BrokerInfo("127.0.0.1", port, "3.1.1", f"embedded amqtt broker (MQTT 3.1.1) on 127.0.0.1:{port}")
        return
    wanted = {"mosquitto": "Mosquitto is not installed", "embedded": "amqtt is not installed"}.get(
        choice, "no MQTT broker answers on 127.0.0.1:1883, Mosquitto is not installed, and neither is amqtt"
    )
    msg = (
        f"{wanted}: apt-get install mosquitto (preferred), or pip install 'inspectd[demo]' for the embedded broker, "
        "or start any broker on 127.0.0.1:1883; then run the demo again"
    )
    raise DemoError(msg)


@contextlib.contextmanager
def _embedded(paths: Paths) -> Iterator[int]:
    """The amqtt broker on a free loopback port, in a thread running its own asyncio loop."""
    import asyncio

    from amqtt.broker import Broker

    port = free_port()
    loop = asyncio.new_event_loop()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    started = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        broker = Broker(config, loop=loop)
        try:
            loop.run_until_complete(broker.start())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(broker.shutdown())
        loop.close()

    thread = threading.Thread(target=serve, name="demo-broker", daemon=True)
    thread.start()
    if not started.wait(10) or failure:
        msg = f"embedded amqtt broker did not start on 127.0.0.1:{port}: {failure[0] if failure else 'timeout'}"
        raise DemoError(msg)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# run --------------------------------------------------------------------------------------------------------------


def make_config(paths: Paths, broker: BrokerInfo, debug_port: int, fps: float) -> Config:
    """The daemon's config for the demo (also written to demo.toml, so `inspectd run --config` can replay it)."""
    values: dict[str, Any] = {  # section -> keys
        "model": {"bundle": str(paths.bundle.resolve()), "threads": 2},
        "source": {"kind": "folder", "uri": str(paths.stream.resolve()), "glob": "frame_*.png", "fps": fps,
                   "name": "demo-cam"},
        # Short queues: the folder is read as fast as the model goes, and deep queues would only add waiting time
        # to the capture -> verdict latency without adding throughput.
        "pipeline": {"queue_size": 1},
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol, "line": "demo",
                 "station": "station1",
                 "spool_dir": str(paths.spool.resolve()), "publish_mask": "never"},
        "debug": {"enabled": True, "bind": f"tcp://127.0.0.1:{debug_port}", "fps": 30.0},
        "metrics": {"enabled": False},
        "log": {"level": "warning"},
    }
    lines = ["# Written by `inspectd demo`: replay with  inspectd run --config " + str(paths.config), ""]
    for section, keys in values.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
        lines.append("")
    paths.config.write_text("\n".join(lines), encoding="utf-8")
    return Config(**values)


@dataclass
class RunResult:
    """What the subscribers saw."""

    verdicts: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> verdict JSON
    received: dict[int, float] = field(default_factory=dict)  # seq -> time.time() at arrival
    view: np.ndarray | None = None
    daemon: dict[str, Any] = field(default_factory=dict)
    broker: str = ""


def _verdict_line(v: dict[str, Any], truth: Truth | None) -> str:
    kind = v.get("verdict", "?")
    score = "   -  " if v.get("score") is None else f"{v['score']:6.2f}"
    regions = len(v.get("regions") or [])
    if truth is None:
        tag, note = "truth ?", ""
    else:
        tag = "good" if truth.label == 0 else f"defect:{truth.defect_type}"
        note = ""
        if kind == "pass" and truth.label == 1:
            note = "  << ESCAPE"
        elif kind == "fail" and truth.label == 0:
            note = "  << FALSE REJECT"
        elif kind == "error":
            note = f"  << ERROR: {v.get('error')}"
    return (f"  seq {v.get('seq', '?'):>4}  {kind.upper():<5} score {score}  regions {regions:>2}  "
            f"truth {tag:<18} latency {v.get('latency_ms', 0):7.1f} ms{note}")


def run_stream(config: Config, truths: list[Truth], broker: str, *, quiet: bool) -> RunResult:
    """Subscribe (MQTT + debug stream), run the daemon on the stream, and collect everything."""
    import paho.mqtt.client as mqtt

    from edge.daemon import run_daemon
    from edge.tools.viewer import Viewer

    result = RunResult(broker=broker)
    lock = threading.Condition()
    prefix = config.mqtt.topic_prefix
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(f"{prefix}/result", qos=1)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            v = json.loads(msg.payload)
        except json.JSONDecodeError:
            return
        with lock:
            if v["seq"] in result.verdicts:
                return  # a QoS 1 duplicate, identified by seq
            result.verdicts[v["seq"]] = v
            result.received[v["seq"]] = time.time()
            lock.notify_all()
        if not quiet:
            fid = v.get("frame_id")
            say(_verdict_line(v, truths[fid] if isinstance(fid, int) and 0 <= fid < len(truths) else None))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"inspectd-demo-{os.getpid()}",
                         protocol=mqtt.MQTTv5 if config.mqtt.protocol == "5" else mqtt.MQTTv311)
    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.connect(config.mqtt.host, config.mqtt.port, keepalive=30)
    client.loop_start()
    viewer = Viewer(config.debug.bind, width=640)
    stop_viewer = threading.Event()

    def watch() -> None:
        while not stop_viewer.is_set():
            viewer.poll(50)

    watcher = threading.Thread(target=watch, name="demo-viewer", daemon=True)
    try:
        if not subscribed.wait(10):
            msg = f"MQTT subscription to {prefix}/result was not acknowledged by {broker} within 10 s"
            raise DemoError(msg)
        watcher.start()
        result.daemon = run_daemon(config, max_frames=len(truths))
        with lock:
            lock.wait_for(lambda: len(result.verdicts) >= len(truths), timeout=10)
        time.sleep(0.3)  # let the viewer drain the last debug frames
    finally:
        stop_viewer.set()
        if watcher.is_alive():
            watcher.join(timeout=10)
        if viewer.received:
            result.view = viewer.view()
        if not watcher.is_alive():  # never close a ZeroMQ socket another thread may still be polling
            viewer.close()
        client.disconnect()
        client.loop_stop()
    return result


# summary and report ------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def summarise(result: RunResult, truths: list[Truth], bundle: Bundle) -> dict[str, Any]:
    """Counts against the truth, throughput and latency percentiles, as printed and written to summary.json."""
    verdicts = [result.verdicts[s] for s in sorted(result.verdicts)]
    counts = {k: sum(1 for v in verdicts if v["verdict"] == k) for k in ("pass", "fail", "error")}
    escapes, false_rejects = [], []
    for v in verdicts:
        t = truths[v["frame_id"]] if 0 <= v.get("frame_id", -1) < len(truths) else None
        if t is None:
            continue
        if v["verdict"] == "pass" and t.label == 1:
            escapes.append(v["seq"])
        elif v["verdict"] == "fail" and t.label == 0:
            false_rejects.append(v["seq"])
    seqs = sorted(result.verdicts)
    gaps = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
    latencies = [float(v["latency_ms"]) for v in verdicts if v.get("latency_ms") is not None]
    throughput = None
    if len(verdicts) >= 2:
        span = max(result.received.values()) - min(v["ts"] for v in verdicts)
        throughput = len(verdicts) / span if span > 0 else None
    return {
        "frames": len(truths),
        "verdicts": len(verdicts),
        "seq_gaps": gaps,
        "pass": counts["pass"],
        "fail": counts["fail"],
        "error": counts["error"],
        "defective_frames": sum(t.label for t in truths),
        "good_frames": sum(1 for t in truths if t.label == 0),
        "escapes": len(escapes),
        "escape_seqs": escapes,
        "false_rejects": len(false_rejects),
        "false_reject_seqs": false_rejects,
        "throughput_fps": None if throughput is None else round(throughput, 1),
        "latency_ms": {f"p{int(q * 100)}": _round(percentile(latencies, q)) for q in (0.5, 0.95, 0.99)},
        "infer_ms": {k: (result.daemon.get("latency", {}).get("infer") or {}).get(f"{k}_ms") for k in ("p50", "p99")},
        "daemon_fps": result.daemon.get("fps"),
        "frames_skipped": result.daemon.get("frames_skipped"),
        "exit_code": result.daemon.get("exit_code"),
        "bundle": {"name": bundle.meta.name, "detector": bundle.meta.detector, "hash": bundle.short_hash,
                   "threshold_method": bundle.meta.thresholds.method},
        "broker": result.broker,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def format_summary(s: dict[str, Any]) -> str:
    """The summary block printed at the end of the demo."""
    lat = s["latency_ms"]
    tp = "n/a" if s["throughput_fps"] is None else f"{s['throughput_fps']} frames/s"
    return "\n".join([
        "=" * 72,
        f"inspectd demo summary — bundle {s['bundle']['name']} ({s['bundle']['detector']}, {s['bundle']['hash']})",
        f"  frames        {s['frames']} sent, {s['verdicts']} verdicts received over MQTT, seq gaps {s['seq_gaps']}",
        f"  verdicts      pass {s['pass']}  fail {s['fail']}  error {s['error']}",
        f"  truth         {s['good_frames']} good, {s['defective_frames']} defective",
        f"  escapes       {s['escapes']} (defective frames passed)",
        f"  false rejects {s['false_rejects']} (good frames failed)",
        f"  throughput    {tp}  (capture of the first frame to the last verdict at the subscriber)",
        f"  latency       p50 {lat['p50']} ms  p95 {lat['p95']} ms  p99 {lat['p99']} ms  (capture -> verdict; "
        f"inference alone p50 {_round(s['infer_ms']['p50'])} ms)",
        f"  broker        {s['broker']}",
        "=" * 72,
    ])


def _data_uri(image: np.ndarray, kind: str = "png") -> str:
    """An image embedded in the HTML report (JPEG for photographs: a tenth of the PNG's size)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if kind == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if kind == "jpeg" else ".png", image, params)
    return f"data:image/{kind};base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""


def _imread(path: Path) -> np.ndarray:
    """A stream frame the demo itself wrote, as BGR."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        msg = f"demo report: cannot read stream frame {path}"
        raise DemoError(msg)
    return image


def heatmaps(bundle: Bundle, files: list[Path]) -> list[np.ndarray]:
    """Anomaly maps (normalised, model size) of `files` from the bundle's ONNX graph, as the daemon computes them."""
    import onnxruntime as ort

    h, w = bundle.meta.input.height, bundle.meta.input.width
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(bundle.onnx_path), opts, providers=["CPUExecutionProvider"])
    maps = []
    for path in files:
        image = _imread(path)
        x = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if bundle.meta.input.color_order == "RGB":
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        outputs = ModelOutputs(*session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[None]}))
        maps.append(outputs.anomaly_map[0, 0])
    return maps


def write_report(paths: Paths, summary: dict[str, Any], result: RunResult, truths: list[Truth],
                 bundle: Bundle) -> Path:
    """report.html: the summary, the debug viewer's last view, and every failed frame (plus escapes) with heatmaps."""
    picked = [v for s, v in sorted(result.verdicts.items())
              if v["verdict"] != "pass" or s in summary["escape_seqs"]]
    files = [paths.stream / truths[v["frame_id"]].file for v in picked]
    maps = heatmaps(bundle, files) if files else []
    panels, cards = [], []
    for v, path, amap in zip(picked, files, maps, strict=True):
        t = truths[v["frame_id"]]
        frame = _imread(path)
        header = dict(v, frame_size=[frame.shape[1], frame.shape[0]])
        truth = "good" if t.label == 0 else f"defect: {t.defect_type}"
        panel = np.hstack([render.render_frame(frame, None, header, overlay=False, width=320),
                           render.render_frame(frame, amap, header, width=320)])
        panels.append(panel)
        outcome = "correct" if (t.label == 1) == (v["verdict"] == "fail") else (
            "ESCAPE" if v["verdict"] == "pass" else "FALSE REJECT" if v["verdict"] == "fail" else "ERROR")
        uri = _data_uri(panel, "jpeg")
        score = render.fmt_num(v.get("score"))
        cards.append(f'<figure><img src="{uri}"><figcaption>seq {v["seq"]} · {v["verdict"]} · score {score} · '
                     f"truth {html.escape(truth)} · <b>{outcome}</b></figcaption></figure>")
    if panels:
        sheet = render.contact_sheet(panels[:MAX_SHEET], columns=2, width=1040)
        cv2.imwrite(str(paths.root / "failed.png"), sheet)
    view = ""
    if result.view is not None:
        uri = _data_uri(result.view)
        view = f'<h2>Debug viewer (what <code>inspectd view</code> showed last)</h2><img src="{uri}">'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>inspectd demo report</title>
<style>body{{font-family:sans-serif;margin:2em;background:#fafafa}}figure{{display:inline-block;margin:0 1em 1em 0}}
img{{max-width:100%}}pre{{background:#eee;padding:1em}}</style></head><body>
<h1>inspectd demo report</h1>
<pre>{html.escape(format_summary(summary))}</pre>
{view}
<h2>Failed frames and escapes ({len(cards)}): frame | frame with heatmap and regions</h2>
{"".join(cards) or "<p>none</p>"}
</body></html>
"""
    paths.report.write_text(page, encoding="utf-8")
    return paths.report


def run(args: argparse.Namespace) -> int:
    """Entry point of `inspectd demo`."""
    configure_logging("warning")
    if args.frames < 1:
        msg = f"--frames must be >= 1, got {args.frames}"
        raise DemoError(msg)
    paths = Paths(args.workdir.resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"inspectd demo in {paths.root}")
    bundle, category = prepare_model(paths, args)
    truths = write_stream(paths, category, args.frames)
    n_bad = sum(t.label for t in truths)
    say(f"[stream] {len(truths)} frames ({len(truths) - n_bad} good, {n_bad} defective) in {paths.stream}")
    shutil.rmtree(paths.spool, ignore_errors=True)  # a fresh seq and no verdicts of an earlier run to replay
    with local_broker(paths, args.broker) as broker:
        say(f"[broker] {broker.description}")
        config = make_config(paths, broker, free_port(), args.fps)
        say(f"[daemon] inspectd run --config {paths.config}  (MQTT {config.mqtt.topic_prefix}/result, "
            f"debug stream {config.debug.bind})")
        result = run_stream(config, truths, broker.description, quiet=args.quiet)
    summary = summarise(result, truths, bundle)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    paths.summary.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    report = write_report(paths, summary, result, truths, bundle)
    say(format_summary(summary))
    say(f"report {report} (failed frames with heatmaps), summary {paths.summary}, took {summary['wall_s']:.0f} s")
    ok = summary["verdicts"] == len(truths) and summary["exit_code"] == 0
    if not ok:
        say(f"demo incomplete: {summary['verdicts']}/{len(truths)} verdicts, daemon exit code {summary['exit_code']}")
    return 0 if ok else 1
