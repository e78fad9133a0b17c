"""The staged pipeline: capture -> preprocess -> infer -> postprocess -> sinks, one thread each.

Stages are joined by bounded queues with a `None` end marker (supervision's `process_video`, with backpressure a la
Frigate).

Rules this module keeps (the product's fail-safe rules):

1. Every frame admitted to the pipeline gets exactly one verdict, numbered by a gap-free `seq` assigned in capture
   order; queues are FIFO and each stage is one thread, so verdicts leave in `seq` order. Anything that goes wrong
   for a frame (unreadable, ROI, inference exception, NaN score) becomes an `error` verdict naming the cause.
2. `continuous` mode, live source (camera, or a file source paced with `fps`): when the pipeline is behind, the
   camera is not blocked; the newest frame is *skipped*: not inspected, given no `seq`, counted in
   `frames_skipped` (published on the stats topic, logged). `seq` numbers judgements, so a seq gap always means a
   lost verdict; a skipped frame shows as a `frame_id` gap instead. Camera outage frames are never skipped.
   File sources without `fps` are never skipped: capture waits for the pipeline instead.
3. `triggered` mode: each `Trigger` yields exactly one verdict carrying its part_id, judged on the first frame
   captured after the trigger arrived (a software-triggered GenICam camera: the exposure that trigger fired); `error`
   if it cannot be: the trigger is stale (redelivered, or queued while the daemon was away), it waited longer than
   `trigger_timeout_s` for the camera, no frame came within that time, or the source ended. A part is never skipped.
   A hardware-triggered camera makes every exposure a part, and trigger messages are paired with exposures by
   edge/pairing.py's rule; what stays unpaired is an `error`. On `stop()` the triggers already accepted are still
   served before capture ends. Once a trigger's verdict is handed to the sinks (durable in the spool),
   `Trigger.settle()` runs: the trigger input then acknowledges the MQTT message, so a crash before that leaves it with
   the broker.
4. Every stage beats `stats.beat(stage)` each loop iteration (queue gets use a timeout), so the watchdog can tell a
   hung stage from an idle one.
5. A sink raising `VerdictLostError` (a verdict it can neither keep nor deliver) stops the pipeline: no frame is
   admitted after it, the loss is logged (`verdicts_lost`, with the seqs) and `failed` is set, so the daemon exits
   non-zero. The seq of a lost verdict stays used: the gap tells the subscriber.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.contract import THRESHOLD, ModelOutputs
from edge.errors import VerdictLostError
from edge.log import bind_thread, get_logger
from edge.pairing import Pairer
from edge.postprocess import find_regions, judge
from edge.preprocess import Geometry, preprocess
from edge.seq import SeqCounter
from edge.sources import Frame, SoftwareTriggered
from edge.verdict import Inspection, Verdict

if TYPE_CHECKING:
    from edge.backends import Backend, Slot
    from edge.config import Config
    from edge.sinks import Sink
    from edge.sources import Source
    from edge.stats import PipelineStats

log = get_logger(__name__)
_TICK = 0.25  # longest a stage waits on a queue before beating again
_PAIR_TICK = 0.05  # hardware trigger: how often part ids and exposures are paired
_SKIP_LOG_EVERY_S = 10.0


def _nothing() -> None:
    """The settle of a trigger nobody has to acknowledge."""


@dataclass(frozen=True)
class Trigger:
    """One part in front of the camera, as a trigger input hands it to `Pipeline.trigger` (never blocking).

    `received` is `time.monotonic()` when it arrived; the part is judged on the first frame captured after it.
    `warning` (a problem with the trigger itself: an oversized payload, a part_id cut short) goes into the verdict.
    `stale` says why the part must not be judged on a frame taken now; it gets an `error` verdict with that reason.
    `settle()` runs once the part's verdict is durable (handed to the sinks): the trigger input acknowledges it then.
    """

    part_id: str | None = None
    received: float = field(default_factory=time.monotonic)
    warning: str | None = None
    stale: str | None = None
    settle: Callable[[], None] = _nothing


@dataclass
class Job:
    """One frame on its way to a verdict."""

    seq: int
    frame: Frame
    trigger: Trigger | None = None
    error: str | None = None
    geometry: Geometry | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """Jobs sharing one backend slot (or, with `slot=None`, an error job that skips the backend)."""

    jobs: list[Job]
    slot: Slot | None = None
    deadline: float = 0.0
    error: str | None = None


class Pipeline:
    """Runs one source through one backend into `sinks`; `start()`, then `stop()` and `join()` (or `run()`).

    Args:
        source: Where frames come from.
        backend: A loaded Backend; the pipeline never closes it.
        sinks: Get every Inspection, in seq order, from the publish thread.
        config: Daemon config (pipeline, postprocess, source.roi, model.max_batch/batch_wait_ms).
        model: {"name", "hash"} carried in every verdict.
        color_order: The bundle's input colour order.
        stats: Where counters, latencies and beats go.
        max_frames: End the stream after this many verdicts (seqs handed out).
        seq: Numbering to continue (see SeqCounter); a fresh in-memory counter from 0 by default.
        on_verdict: Called from the publish thread after each inspection was handed to the sinks.
    """

    def __init__(
        self,
        source: Source,
        backend: Backend,
        sinks: Sequence[Sink],
        *,
        config: Config,
        model: dict[str, str],
        color_order: str,
        stats: PipelineStats,
        max_frames: int | None = None,
        seq: SeqCounter | None = None,
        on_verdict: Callable[[Inspection], None] | None = None,
    ) -> None:
        self.source = source
        self.backend = backend
        self.sinks = list(sinks)
        self.config = config
        self.model = model
        self.color_order = color_order
        self.stats = stats
        self.max_frames = max_frames
        self.seq = seq or SeqCounter(None)
        self.on_verdict = on_verdict
        self.issued = 0  # seqs handed out by this pipeline
        self.published = 0
        self.failed: BaseException | None = None
        size = config.pipeline.queue_size
        self._q_pre: queue.Queue[Job | None] = queue.Queue(size)
        self._q_infer: queue.Queue[Batch | None] = queue.Queue(size)
        self._q_post: queue.Queue[Batch | None] = queue.Queue(size)
        self._q_sink: queue.Queue[tuple[Inspection, float, Trigger | None] | None] = queue.Queue(size)
        self._triggers: queue.Queue[Trigger] = queue.Queue()
        self.lost: list[int] = []  # seqs of verdicts a sink could neither keep nor deliver
        self._triggered: dict[int, Trigger] = {}  # seq -> its trigger, settled once the verdict is published
        self._stopping = threading.Event()
        self._stopped_at = math.inf
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_dropped = 0
        self._capture_ms: dict[int, float] = {}  # frame_id -> read/decode time, until the frame is admitted
        self._skips_unlogged = 0
        self._skip_logged_at = 0.0

    # control ----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the five stage threads."""
        stages = [
            ("capture", self._capture),
            ("preprocess", self._preprocess),
            ("infer", self._infer),
            ("postprocess", self._postprocess),
            ("publish", self._publish),
        ]
        for name, target in stages:
            thread = threading.Thread(target=self._stage, args=(name, target), name=f"stage-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop capturing; frames already admitted are still judged and published (drain), triggers served."""
        if not self._stopping.is_set():
            self._stopped_at = time.monotonic()
        self._stopping.set()

    @property
    def done(self) -> bool:
        """Every stage has finished (the end marker went all the way through)."""
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the drain; False if it did not finish within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def run(self, stop: threading.Event | None = None, drain_timeout: float | None = None) -> None:
        """start(), wait for the end of the stream or `stop`, then drain."""
        self.start()
        while not self._done.wait(_TICK):
            if stop is not None and stop.is_set():
                break
        self.stop()
        self.join(drain_timeout)

    def trigger(self, trigger: Trigger) -> None:
        """Queue one part to inspect (called from a trigger input's thread; never blocks)."""
        self._triggers.put(trigger)

    # plumbing ---------------------------------------------------------------------------------------------------
    def _stage(self, name: str, body: Callable[[], None]) -> None:
        """Run one stage loop; a bug in it stops the pipeline loudly instead of hanging it silently."""
        bind_thread(stage=name, camera=self.source.name)
        try:
            body()
        except BaseException as exc:
            log.exception("stage_crashed", stage=name)
            self.failed = self.failed or exc
            self._stopping.set()
            raise
        finally:
            if name == "publish":
                self._done.set()

    def _put(self, q: queue.Queue[Any], item: Any, stage: str) -> None:
        """Blocking put that keeps beating; gives up only when a downstream stage has crashed."""
        while True:
            self.stats.beat(stage)
            try:
                q.put(item, timeout=_TICK)
                return
            except queue.Full:
                if self.failed is not None:
                    return

    def _get(self, q: queue.Queue[Any], stage: str, timeout: float = _TICK) -> Any:
        self.stats.beat(stage)
        return q.get(timeout=timeout)

    # 1. capture -------------------------------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            if self.config.pipeline.mode == "triggered":
                self._capture_triggered()
            else:
                self._capture_continuous()
        finally:
            if self.config.pipeline.mode == "triggered":
                self._fail_pending_triggers("inspectd is stopping" if self._stopping.is_set() else "source ended")
            self._flush_skip_log(force=True)
            self._put(self._q_pre, None, "capture")

    def _enough(self) -> bool:
        return self.max_frames is not None and self.issued >= self.max_frames

    def _read(self, timeout: float) -> Frame | None:
        t0 = time.perf_counter()
        frame = self.source.read(timeout)
        if frame is not None:
            self._captured(frame, time.perf_counter() - t0)
        return frame

    def _captured(self, frame: Frame, seconds: float) -> None:
        self._capture_ms[frame.frame_id] = round(seconds * 1000, 3)
        self.stats.frame_captured()
        self.stats.observe("capture", seconds)

    def _capture_continuous(self) -> None:
        while not self._stopping.is_set() and not self._enough():
            self.stats.beat("capture")
            frame = self._read(_TICK)
            dropped = self.source.dropped
            if dropped != self._last_dropped:  # frames the camera buffer overwrote before we read them
                self._skipped(dropped - self._last_dropped)
                self._last_dropped = dropped
            if frame is None:
                if self.source.finished:
                    return
                continue
            if self.source.live and frame.error is None and self._q_pre.full():
                self._skipped(1)
                continue
            self._admit(frame, None)

    def _admit(self, frame: Frame, trigger: Trigger | None, error: str | None = None) -> None:
        job = Job(self.seq.take(), frame, trigger, error or frame.error)
        if trigger is not None:
            self._triggered[job.seq] = trigger
        capture_ms = self._capture_ms.pop(frame.frame_id, None)
        self._capture_ms.clear()  # entries of skipped frames
        if capture_ms is not None:
            job.timings["capture"] = capture_ms
        self.issued += 1
        self._put(self._q_pre, job, "capture")

    def _skipped(self, n: int) -> None:
        self.stats.frame_skipped(n)
        self._skips_unlogged += n
        self._flush_skip_log()

    def _flush_skip_log(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._skips_unlogged and (force or now - self._skip_logged_at >= _SKIP_LOG_EVERY_S):
            log.warning("frames_skipped", count=self._skips_unlogged, reason="pipeline behind the camera")
            self._skips_unlogged, self._skip_logged_at = 0, now

    def _capture_triggered(self) -> None:
        if self.config.source.trigger == "hardware":
            self._capture_paired()
            return
        software = self.source if isinstance(self.source, SoftwareTriggered) else None
        if self.config.source.trigger != "software":
            software = None
        timeout = self.config.pipeline.trigger_timeout_s
        while not self._enough() and self.failed is None:
            self.stats.beat("capture")
            if self._stopping.is_set() and time.monotonic() - self._stopped_at > timeout + 1.0:
                return  # still more after the stop (the trigger input did not unsubscribe): those get errors
            try:
                trigger = self._triggers.get(timeout=_TICK)
            except queue.Empty:
                if self._stopping.is_set():
                    return  # every trigger accepted before the stop was served
                self._idle_live_source(polled=software is not None)
                continue
            waited = time.monotonic() - trigger.received
            frame: Frame | None = None
            error = trigger.stale
            if error is None and waited > timeout:
                error = (f"trigger waited {waited:.1f} s for the camera, longer than pipeline.trigger_timeout_s "
                         f"({timeout:g} s): part not inspected")
            if error is None and software is not None:
                frame, error = self._exposure(software, trigger.received)
            elif error is None:
                frame, error = self._frame_after(trigger.received)
            self._admit(frame or self.source.error_frame(error or "no frame"), trigger)
            if self.source.finished:
                return

    def _idle_live_source(self, *, polled: bool = False) -> None:
        """Between triggers, keep a camera's buffer fresh and report outages (they are not parts).

        A software-triggered camera (`polled`) sends no frames between triggers, only its outage reports.
        """
        if not (self.source.live or polled):
            return
        frame = self._read(0.0)
        if frame is not None and frame.outage:
            self._admit(frame, None)

    def _exposure(self, source: SoftwareTriggered, received: float) -> tuple[Frame | None, str | None]:
        """Software trigger: fire the camera and wait for exactly that exposure, else (None, why)."""
        timeout = self.config.pipeline.trigger_timeout_s
        deadline = received + timeout
        if time.monotonic() >= deadline:
            return None, f"trigger waited over {timeout:g} s behind earlier ones; camera {self.source.name} not fired"
        t0 = time.perf_counter()
        frame = source.fire()
        while frame is None:
            self.stats.beat("capture")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, f"no exposure from camera {self.source.name} within {timeout:g} s of the trigger"
            frame = source.exposure(min(remaining, _TICK))
        self._captured(frame, time.perf_counter() - t0)
        return frame, None

    def _capture_paired(self) -> None:
        """Hardware trigger with part ids: every exposure is a part, paired with trigger messages (edge/pairing.py)."""
        pairer: Pairer[Trigger] = Pairer(self.config.pipeline.trigger_timeout_s, self.source.name)
        try:
            while not self._stopping.is_set() and not self._enough() and self.failed is None:
                self.stats.beat("capture")
                while True:
                    try:
                        trigger = self._triggers.get_nowait()
                    except queue.Empty:
                        break
                    if trigger.stale is not None:  # its exposure is long gone: never pair it with a later one
                        self._admit(self.source.error_frame(trigger.stale), trigger)
                    else:
                        pairer.part(trigger, trigger.received)
                frame = self._read(_PAIR_TICK)
                if frame is not None and frame.outage:
                    self._admit(frame, None)  # an outage is not a part
                elif frame is not None:
                    pairer.exposure(frame)
                for pair in pairer.due(time.monotonic()):
                    self._admit(pair.frame or self.source.error_frame(pair.error or ""), pair.part_id, pair.error)
                if self.source.finished:
                    return
        finally:
            why = "inspectd is stopping" if self._stopping.is_set() or self._enough() else "source ended"
            for pair in pairer.drain(why):
                self._admit(pair.frame or self.source.error_frame(pair.error or ""), pair.part_id, pair.error)

    def _frame_after(self, received: float) -> tuple[Frame | None, str | None]:
        """The first frame captured after `received` (or an outage frame), else (None, why)."""
        timeout = self.config.pipeline.trigger_timeout_s
        deadline = received + timeout
        while True:
            self.stats.beat("capture")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, f"no frame from camera {self.source.name} within {timeout:g} s of the trigger"
            frame = self._read(min(remaining, _TICK))
            if frame is None:
                if self.source.finished:
                    return None, f"source {self.source.name} has no more frames"
                continue
            if frame.outage or frame.mono >= received:
                return frame, None

    def _fail_pending_triggers(self, why: str) -> None:
        while True:
            try:
                trigger = self._triggers.get_nowait()
            except queue.Empty:
                return
            frame = self.source.error_frame(f"trigger not served: {why}")
            self._admit(frame, trigger)

    # 2. preprocess ----------------------------------------------------------------------------------------------
    def _preprocess(self) -> None:
        current: Batch | None = None
        max_batch = self.backend.max_batch
        wait_s = self.config.model.batch_wait_ms / 1000.0 if max_batch > 1 else 0.0
        try:
            while True:
                timeout = _TICK if not current or not current.jobs else max(0.0, current.deadline - time.monotonic())
                try:
                    job = self._get(self._q_pre, "preprocess", timeout)
                except queue.Empty:
                    if current is not None and current.jobs:
                        self._put(self._q_infer, current, "preprocess")
                        current = None
                    continue
                if job is None:
                    return
                if job.error is not None:
                    if current is not None and current.jobs:
                        self._put(self._q_infer, current, "preprocess")
                        current = None
                    self._put(self._q_infer, Batch([job]), "preprocess")
                    continue
                if current is None:
                    try:
                        slot = self.backend.acquire()
                    except Exception as exc:  # noqa: BLE001 - no slot (a lost GPU, a closed backend): this frame's error
                        job.error = f"inference failed: {type(exc).__name__}: {exc}"
                        log.warning("acquire_failed", seq=job.seq, error=str(exc))
                        self._put(self._q_infer, Batch([job]), "preprocess")
                        continue
                    current = Batch([], slot, time.monotonic() + wait_s)
                if not self._fill(current, job):
                    if current.jobs:
                        self._put(self._q_infer, current, "preprocess")
                        current = None
                    self._put(self._q_infer, Batch([job]), "preprocess")
                    continue
                if len(current.jobs) == max_batch or wait_s == 0.0:
                    self._put(self._q_infer, current, "preprocess")
                    current = None
        finally:
            if current is not None and current.jobs:
                self._put(self._q_infer, current, "preprocess")
            elif current is not None and current.slot is not None:
                self.backend.release(current.slot)
            self._put(self._q_infer, None, "preprocess")

    def _fill(self, batch: Batch, job: Job) -> bool:
        """Preprocess `job` into the batch's next input row; False (and job.error) if it cannot be."""
        t0 = time.perf_counter()
        try:
            image, slot = job.frame.image, batch.slot
            if image is None or slot is None:  # error jobs go round the backend, so never here
                msg = f"frame {job.frame.frame_id} has no image or no backend slot"
                raise RuntimeError(msg)
            job.geometry = preprocess(
                image,
                slot.input[len(batch.jobs)],
                roi=self.config.source.roi,
                color_order=self.color_order,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is this frame's error verdict
            job.error = f"preprocess failed: {exc}"
            log.warning("preprocess_failed", seq=job.seq, frame_id=job.frame.frame_id, error=str(exc))
            return False
        seconds = time.perf_counter() - t0
        job.timings["preprocess"] = round(seconds * 1000, 3)
        self.stats.observe("preprocess", seconds)
        batch.jobs.append(job)
        return True

    # 3. infer ---------------------------------------------------------------------------------------------------
    def _infer(self) -> None:
        try:
            while True:
                try:
                    batch = self._get(self._q_infer, "infer")
                except queue.Empty:
                    continue
                if batch is None:
                    return
                if batch.slot is not None:
                    t0 = time.perf_counter()
                    try:
                        self.backend.submit(batch.slot, len(batch.jobs))
                    except Exception as exc:  # noqa: BLE001 - an error verdict, not a crash (logged)
                        batch.error = f"inference failed: {type(exc).__name__}: {exc}"
                        self._inference_failed(batch, exc)
                    seconds = time.perf_counter() - t0
                    self.stats.observe("infer", seconds)
                    for job in batch.jobs:
                        job.timings["infer"] = round(seconds * 1000, 3)
                self._put(self._q_post, batch, "infer")
        finally:
            self._put(self._q_post, None, "infer")

    # 4. postprocess ---------------------------------------------------------------------------------------------
    def _postprocess(self) -> None:
        try:
            while True:
                try:
                    batch = self._get(self._q_post, "postprocess")
                except queue.Empty:
                    continue
                if batch is None:
                    return
                for inspection, mono in self._judge(batch):
                    self._put(self._q_sink, (inspection, mono), "postprocess")
        finally:
            self._put(self._q_sink, None, "postprocess")

    def _judge(self, batch: Batch) -> list[tuple[Inspection, float]]:
        if batch.slot is None:
            return [(self._error(job, job.error or "unknown error"), job.frame.mono) for job in batch.jobs]
        outputs = self._collect(batch, batch.slot)
        out: list[tuple[Inspection, float]] = []
        for i, job in enumerate(batch.jobs):
            if outputs is None:
                out.append((self._error(job, batch.error or "inference failed"), job.frame.mono))
                continue
            try:
                out.append((self._inspect(job, outputs, i), job.frame.mono))
            except Exception as exc:  # this frame's error verdict (logged)
                log.exception("postprocess_failed", seq=job.seq)
                out.append((self._error(job, f"postprocess failed: {exc}"), job.frame.mono))
        return out

    def _collect(self, batch: Batch, slot: Slot) -> ModelOutputs | None:
        """Wait for the batch's slot, copy its outputs out and release the slot at once (None: inference failed).

        The slot is free for the next batch while this one is post-processed: held until after post-processing,
        each slot spanned preprocess + GPU + postprocess and two slots capped the GPU path's throughput.
        """
        try:
            if batch.error is None:
                return ModelOutputs(*(a.copy() for a in self.backend.wait(slot)))
        except Exception as exc:  # noqa: BLE001 - every job of the batch is an error (logged)
            self._inference_failed(batch, exc)
            batch.error = f"inference failed: {exc}"
        finally:
            self.backend.release(slot)
        return None

    def _inference_failed(self, batch: Batch, exc: BaseException) -> None:
        """Log a failed submit/wait with its traceback, or without once the GPU is lost.

        The loss itself is logged once (cuda_device_lost); every later batch fails the same way, and rendering a
        traceback for each slows the drain of the remaining frames.
        """
        seqs = [j.seq for j in batch.jobs]
        if self.backend.fatal is not None:
            log.error("inference_failed", seqs=seqs, error=str(exc), cause="device lost")
        else:
            log.exception("inference_failed", seqs=seqs)

    def _inspect(self, job: Job, outputs: ModelOutputs, i: int) -> Inspection:
        t0 = time.perf_counter()
        score = float(outputs.score[i])
        if not math.isfinite(score):
            return self._error(job, f"model returned a non-finite score ({score})")
        amap = outputs.anomaly_map[i, 0]  # views of _collect's copies: the slot's buffers are already reused
        mask = outputs.mask[i, 0]
        if job.geometry is None:  # set by _fill for every job that reached the backend
            return self._error(job, "postprocess failed: no preprocess geometry for this frame")
        pp = self.config.postprocess
        regions = find_regions(mask, amap, job.geometry, min_area=pp.min_area, max_regions=pp.max_regions)
        kind = judge(score, regions)
        seconds = time.perf_counter() - t0
        job.timings["postprocess"] = round(seconds * 1000, 3)
        self.stats.observe("postprocess", seconds)
        verdict = self._verdict(job, kind, round(score, 6), regions, None)
        return Inspection(verdict, job.frame.image, amap, mask, job.timings, job.geometry)

    def _error(self, job: Job, why: str) -> Inspection:
        return Inspection(self._verdict(job, "error", None, (), why), job.frame.image, timings_ms=job.timings)

    def _verdict(
        self, job: Job, kind: str, score: float | None, regions: tuple[Any, ...], error: str | None
    ) -> Verdict:
        return Verdict(
            seq=job.seq,
            frame_id=self.seq.frame_base + job.frame.frame_id,
            ts=job.frame.ts,
            outcome=kind,  # type: ignore[arg-type]
            score=score,
            threshold=THRESHOLD,
            latency_ms=round((time.monotonic() - job.frame.mono) * 1000, 3),
            model=self.model,
            source=job.frame.source,
            part_id=job.trigger.part_id if job.trigger is not None else None,
            regions=regions,
            error=error,
            camera=job.frame.camera,
            warning=job.trigger.warning if job.trigger is not None else None,
        )

    # 5. publish -------------------------------------------------------------------------------------------------
    def _publish(self) -> None:
        queues: dict[str, queue.Queue[Any]] = {
            "capture": self._q_pre, "infer": self._q_infer, "postprocess": self._q_post, "publish": self._q_sink
        }
        while True:
            try:
                item = self._get(self._q_sink, "publish")
            except queue.Empty:
                continue
            finally:
                for name, q in queues.items():
                    self.stats.set_queue_depth(name, q.qsize())
            if item is None:
                return
            inspection, mono = item
            t0 = time.perf_counter()
            if self._hand_to_sinks(inspection):
                trigger = self._triggered.pop(inspection.verdict.seq, None)
                if trigger is not None:
                    trigger.settle()
            seconds = time.perf_counter() - t0
            inspection.timings_ms["publish"] = round(seconds * 1000, 3)
            self.stats.observe("publish", seconds)
            self.stats.observe("end_to_end", time.monotonic() - mono)
            self.stats.verdict(inspection.verdict.outcome)
            if inspection.verdict.outcome == "error":
                log.warning("error_verdict", seq=inspection.verdict.seq, error=inspection.verdict.error)
            self.published += 1
            if self.on_verdict is not None:
                self.on_verdict(inspection)

    def _hand_to_sinks(self, inspection: Inspection) -> bool:
        """Publish to every sink; False when one lost the verdict (the pipeline then stops admitting frames).

        The seq is recorded as used afterwards, lost or not: after the spool append, so a kill in between can only
        make the next run reuse a number nobody saw, never leave a gap for a verdict that was kept.
        """
        verdict = inspection.verdict
        kept = True
        try:
            for sink in self.sinks:
                try:
                    sink.publish(inspection)
                except VerdictLostError as exc:
                    kept = False
                    self.lost.append(verdict.seq)
                    self.stats.count("verdicts_lost")
                    log.critical("verdicts_lost", seqs=[verdict.seq], error=str(exc), lost_total=len(self.lost),
                                 action="admitting no more frames; exit code 1")
                    self.failed = self.failed or exc
                    self._stopping.set()
                except Exception:  # one sink's bug must not stop the others or the line (logged)
                    log.exception("sink_publish_failed", sink=type(sink).__name__, seq=verdict.seq)
        finally:
            self.seq.publishing(verdict.seq, verdict.frame_id)
        return kept
