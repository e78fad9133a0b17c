"""`inspectd run --config PATH [--max-frames N]`: the daemon, and `run_daemon()` for bench and demo.

Start-up order is chosen so an operator error fails fast with exit code 2 before anything is announced: config,
bundle (hash-checked, every path inside it), backend (graph checked against the bundle contract), source, spool and
seq state, metrics port; only then the MQTT connection starts (its "online" follows the trigger SUBACK, so it means
"ready"), the pipeline, and READY=1 to systemd.

Shutdown (SIGTERM/SIGINT, end of a finite source, or `--max-frames` reached): the trigger subscription is dropped,
triggers already accepted are judged, capture stops, frames already admitted are judged and published, the sinks get
the rest of `pipeline.shutdown_timeout_s` to get every verdict acknowledged (what is not stays in the on-disk spool
for the next start), `offline` is published, exit 0.

Faults (edge/supervise.py): a crashed or hung stage or internal thread, a verdict neither kept nor delivered, a
verdict the spool dropped: the daemon drains what it can and exits 1, so systemd restarts it; a killed daemon's
"offline" comes from the broker (the Last Will).
"""

from __future__ import annotations

import argparse
import math
import signal
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge import log as logging_setup
from edge.backends import load_backend
from edge.bundle import load_bundle
from edge.config import Config, load_config
from edge.errors import ConfigError, InspectdError
from edge.log import get_logger
from edge.mqtt.connection import MqttConnection
from edge.mqtt.results import MqttSink
from edge.mqtt.spool import Spool
from edge.mqtt.triggers import TriggerInput
from edge.notify import enable_faulthandler
from edge.pipeline import Pipeline
from edge.seq import SeqCounter
from edge.sources import open_source
from edge.sources.live import redact
from edge.stats import PipelineStats
from edge.supervise import Supervisor

if TYPE_CHECKING:
    from edge.backends import Backend
    from edge.bundle import Bundle
    from edge.notify import Notifier
    from edge.sinks import Sink

log = get_logger(__name__)
SEQ_STATE = "seq.json"  # in mqtt.spool_dir: seq numbering continues across restarts, like the spool itself


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inspectd run`."""
    parser.add_argument("--config", type=Path, required=True, help="config file (TOML); relative paths in it are "
                        "relative to its folder; INSPECTD_SECTION__KEY environment variables override it")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N",
                        help="exit 0 after N verdicts, once all of them are published and acknowledged")


def run(args: argparse.Namespace) -> int:
    """Entry point of `inspectd run`; ConfigError/BundleError propagate to the CLI, which exits 2."""
    enable_faulthandler()  # a watchdog SIGABRT (or a hang while loading) dumps every thread's stack
    logging_setup.configure()
    if args.max_frames is not None and args.max_frames < 1:
        msg = f"--max-frames must be >= 1, got {args.max_frames}"
        raise ConfigError(msg)
    base_dir = args.config.resolve().parent
    config = load_config(args.config, base_dir=base_dir)
    logging_setup.configure(config.log.level, config.log.format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name, action="draining and stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result = run_daemon(config, max_frames=args.max_frames, stop=stop, base_dir=base_dir)
    return int(result["exit_code"])


def birth_info(config: Config, bundle: Bundle, backend: Backend) -> dict[str, Any]:
    """The retained <prefix>/status/info message: what is running, so a line engineer can check it remotely."""
    return {
        "version": __version__,
        "bundle": {
            "name": bundle.meta.name,
            "hash": bundle.short_hash,
            "detector": bundle.meta.detector,
            "created": bundle.meta.created,
        },
        "source": {"kind": config.source.kind, "name": config.source.name, "uri": redact(config.source.uri)},
        "thresholds": bundle.meta.thresholds.model_dump(mode="json"),
        "mode": config.pipeline.mode,
        "backend": backend.name,
    }


def run_daemon(
    config: Config,
    *,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Run until `stop` is set, the source ends, `max_frames` verdicts, or a fault; return the final stats snapshot.

    The snapshot has extra keys: `published` (verdicts handed to the sinks), `delivered` (MQTT acknowledged
    everything, or MQTT is off), `drained` (every admitted frame got its verdict in time), `lost` (seqs of verdicts
    neither kept nor delivered) and `exit_code`: 0; 70 (DeviceLostError.exit_code) when the GPU was lost; 1 when a
    stage or internal thread crashed or hung, the drain timed out, a verdict was lost (also one the spool dropped),
    or `max_frames` verdicts could not all be acknowledged in time.

    Raises:
        ConfigError: triggered mode without MQTT, a software trigger without triggered mode, a sink's configuration
            is unusable, the metrics port is taken, or (CameraConfigError) a GenICam camera refuses a setting.
        BundleError: the bundle is missing, tampered with, or its graph is not the bundle contract.
        SourceError: a folder or video file cannot be opened.
    """
    from edge.health import serve_metrics
    from edge.notify import Notifier, start_watchdog

    stop = stop or threading.Event()
    if config.pipeline.mode == "triggered" and not config.mqtt.enabled:
        msg = "pipeline.mode = 'triggered' needs MQTT (triggers arrive on <prefix>/trigger); set mqtt.enabled = true"
        raise ConfigError(msg)
    if config.source.trigger == "software" and config.pipeline.mode != "triggered":
        msg = "source.trigger = 'software' fires the camera per trigger message: it needs pipeline.mode = 'triggered'"
        raise ConfigError(msg)
    stats = PipelineStats()
    notifier = Notifier()
    bundle = load_bundle(config.model.bundle)
    if config.model.backend == "tensorrt":
        notifier.extend_timeout(120.0)  # deserialising an engine and capturing CUDA graphs can take a while
    result: dict[str, Any] = {}
    close_by = math.inf  # monotonic deadline for closing the sinks, set when shutdown starts
    supervisor = Supervisor()
    # Everything opened below is closed by the stack, newest first (watchdog, capture, sinks, MQTT connection,
    # metrics, seq state, spool, source, backend), also when start-up fails half-way. Nothing is announced (MQTT
    # "online", READY=1) before every start-up check passed, the metrics port included.
    with supervisor.installed(), ExitStack() as opened:
        backend = load_backend(bundle, config.model)
        pipeline: Pipeline | None = None
        opened.callback(lambda: _close_backend(backend, pipeline))
        stats.backend = backend.name
        source = opened.enter_context(closing(open_source(config.source, base_dir, stats=stats)))
        spool: Spool | None = None
        if config.mqtt.enabled:
            spool = Spool(config.mqtt.spool_dir, int(config.mqtt.spool_max_mb * 1_000_000), config.mqtt.spool_fsync)
            opened.callback(spool.close)
        floor = spool.last_seq + 1 if spool is not None and spool.last_seq is not None else 0
        seq = SeqCounter(config.mqtt.spool_dir / SEQ_STATE if config.mqtt.enabled else None, floor=floor)
        opened.callback(lambda: seq.close(clean=bool(result.get("drained"))))  # unclean: seq.json keeps its place
        opened.callback(serve_metrics(config.metrics, stats))
        sinks: list[Sink] = []
        connection: MqttConnection | None = None
        if config.mqtt.enabled and spool is not None:
            connection = MqttConnection(config.mqtt, info=birth_info(config, bundle, backend), stats=stats,
                                        supervisor=supervisor)
            opened.callback(lambda: connection.close(close_by))  # type: ignore[union-attr]
            sinks.append(MqttSink(config.mqtt, connection, spool, stats=stats, before_direct_send=seq.publishing))
        if config.debug.enabled:
            from edge.sinks.zmq_debug import DebugSink

            sinks.append(DebugSink(config.debug))
        opened.callback(lambda: _close_sinks(sinks, close_by))
        pipeline = Pipeline(
            source,
            backend,
            sinks,
            config=config,
            model={"name": bundle.meta.name, "hash": model_hash(bundle, backend)},
            color_order=bundle.meta.input.color_order,
            stats=stats,
            max_frames=max_frames,
            seq=seq,
        )
        opened.callback(pipeline.stop)  # no-op after a normal shutdown; stops capture if start-up or serving raised
        triggers = None
        if config.pipeline.mode == "triggered" and connection is not None:
            triggers = TriggerInput(connection, config.mqtt, pipeline.trigger)  # before connecting: online waits
        pipeline.start()
        if connection is not None:
            connection.start()
        notifier.ready()
        watchdog_stop = threading.Event()
        opened.callback(watchdog_stop.set)
        start_watchdog(notifier, stats, watchdog_stop)
        log.info("daemon_started", version=__version__, bundle=bundle.meta.name, hash=bundle.short_hash,
                 backend=backend.name, source=f"{config.source.kind}:{redact(config.source.uri)}",
                 mode=config.pipeline.mode, max_frames=max_frames)
        _serve(pipeline, backend, stop, sinks, stats, supervisor, config.mqtt.stats_interval_s)
        close_by = time.monotonic() + config.pipeline.shutdown_timeout_s
        result = _shutdown(pipeline, backend, sinks, triggers, stats, config, notifier, supervisor, spool, max_frames)
    log.info("daemon_stopped", exit_code=result.get("exit_code"), published=result.get("published"),
             verdicts=result.get("verdicts"), frames_skipped=result.get("frames_skipped"),
             lost=result.get("lost"), failure=supervisor.failure)
    return result


def _fatal_exit_code(fatal: BaseException) -> int:
    """The exit code of a backend's fatal error: DeviceLostError's 70, else 1."""
    return fatal.exit_code if isinstance(fatal, InspectdError) else 1


def _close_backend(backend: Backend, pipeline: Pipeline | None) -> None:
    """Close the backend, but only once no stage thread can touch its buffers any more, and never raise.

    After a drain timeout a stage may still be writing into a pinned slot or waiting on its event: freeing then is a
    use-after-free, so the backend is left to the process exit instead.
    """
    if pipeline is not None and not pipeline.join(0):
        log.error("backend_not_closed", backend=backend.name, reason="pipeline stages still running after the drain")
        return
    try:
        backend.close()
    except Exception:  # logged: the rest of the shutdown (seq state, log line, exit code) must still happen
        log.exception("backend_close_failed", backend=backend.name)


def model_hash(bundle: Bundle, backend: Backend) -> str:
    """The short hash carried in every verdict: of the model file that actually runs (FP32 or an INT8 flavour)."""
    return bundle.meta.files.get(backend.model_file, "")[:12] or bundle.short_hash


def _close_sinks(sinks: list[Sink], deadline: float) -> None:
    """Close every sink, newest first, within `deadline`; one sink's failure does not keep the others open."""
    for sink in reversed(sinks):
        try:
            sink.close(deadline)
        except Exception:  # closing the others matters more than this one's error (logged)
            log.exception("sink_close_failed", sink=type(sink).__name__)


def _serve(
    pipeline: Pipeline, backend: Backend, stop: threading.Event, sinks: list[Sink], stats: PipelineStats,
    supervisor: Supervisor, interval: float,
) -> None:
    """Wait for the end of the stream, a stop request, a fault or a lost GPU, publishing stats every `interval` s."""
    next_stats = time.monotonic() + interval
    while not pipeline.done and not stop.wait(0.1):
        if supervisor.failed:
            log.error("daemon_failing", failure=supervisor.failure, action="draining, then exit 1")
            break
        if pipeline.failed is not None:
            break  # it stopped admitting frames itself; _shutdown drains and says why
        if backend.fatal is not None:  # TensorRT: sticky CUDA error, no later frame can succeed
            log.critical("backend_fatal", error=str(backend.fatal),
                         action=f"draining with error verdicts, exit {_fatal_exit_code(backend.fatal)}")
            break
        supervisor.check_stuck(stats)
        if sinks and time.monotonic() >= next_stats:
            next_stats += interval
            _publish_stats(sinks, stats, supervisor)


def _publish_stats(sinks: list[Sink], stats: PipelineStats, supervisor: Supervisor) -> None:
    """One stats snapshot to every sink; a failure here is a daemon failure like any thread's."""
    try:
        snapshot = stats.snapshot()
        for sink in sinks:
            sink.publish_stats(snapshot)
    except Exception as exc:  # noqa: BLE001 - reported, and the daemon stops with exit code 1
        supervisor.fail("stats", exc)


def _shutdown(
    pipeline: Pipeline,
    backend: Backend,
    sinks: list[Sink],
    triggers: TriggerInput | None,
    stats: PipelineStats,
    config: Config,
    notifier: Notifier,
    supervisor: Supervisor,
    spool: Spool | None,
    max_frames: int | None,
) -> dict[str, Any]:
    """Stop: unsubscribe triggers, drain (accepted triggers are served), let the sinks deliver, pick the exit code.

    The sinks get what is left of `pipeline.shutdown_timeout_s` after the drain.
    """
    budget = config.pipeline.shutdown_timeout_s
    deadline = time.monotonic() + budget  # the caller's close_by is the same moment
    notifier.stopping()
    notifier.extend_timeout(budget + 5.0)
    if triggers is not None:
        triggers.stop(timeout=budget / 2)  # no new part after this; the accepted ones are judged below
    pipeline.stop()
    drained = pipeline.join(max(0.0, deadline - time.monotonic()))
    if not drained:
        log.error("shutdown_drain_timeout", timeout_s=budget, published=pipeline.published, issued=pipeline.issued)
    delivered = True
    for sink in sinks:
        delivered = sink.wait_delivered(max(0.0, deadline - time.monotonic())) and delivered
    if sinks:
        _publish_stats(sinks, stats, supervisor)
    if not delivered:
        log.warning("shutdown_undelivered", spool_dir=str(config.mqtt.spool_dir),
                    action="kept in the spool, replayed at the next start")
    snapshot = stats.snapshot()
    lost_in_spool = spool is not None and (spool.dropped > 0 or spool.unknown_loss)
    exit_code = 0
    if backend.fatal is not None:  # a lost GPU: 70, which the unit restarts on (a fresh process, a fresh context)
        exit_code = _fatal_exit_code(backend.fatal)
    elif pipeline.failed is not None or not drained or supervisor.failed:
        exit_code = 1  # non-zero: systemd's Restart=on-failure restarts us
    elif pipeline.lost or snapshot.get("verdicts_lost") or lost_in_spool:
        exit_code = 1  # a verdict was lost: never a clean exit
    elif max_frames is not None and not delivered:
        exit_code = 1  # the --max-frames contract is "all published and acknowledged"
    if pipeline.lost or lost_in_spool:
        log.critical("verdicts_lost", seqs=pipeline.lost, lost_total=len(pipeline.lost),
                     spool_dropped=spool.dropped if spool is not None else 0, exit_code=exit_code)
    extra = {"published": pipeline.published, "delivered": delivered, "drained": drained, "lost": pipeline.lost,
             "exit_code": exit_code}
    return snapshot | extra
