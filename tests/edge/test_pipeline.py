"""The staged pipeline with a real tiny ONNX bundle, real OpenCV sources and an in-memory sink."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest

from edge.backends import load_backend
from edge.bundle import Bundle
from edge.config import Config
from edge.errors import VerdictLostError
from edge.pipeline import Pipeline, Trigger
from edge.seq import SeqCounter
from edge.sources import Frame, FrameFactory, Source, open_source
from edge.sources.live import LiveSource
from edge.stats import PipelineStats
from edge.verdict import Inspection, Verdict
from tests.bundles import blob_frame, make_tiny_bundle


class ListSink:
    """Collects inspections in publish order (the pipeline is under test here, not a sink)."""

    def __init__(self) -> None:
        self.items: list[Inspection] = []

    def publish(self, inspection: Inspection) -> None:
        """Record the inspection."""
        self.items.append(inspection)

    def close(self) -> None:
        """Nothing to release."""
        pass

    def __enter__(self) -> ListSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny real bundle shared by the module's tests."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


def write_frames(folder: Path, n: int, *, size: int = 64, blob_every: int = 3) -> list[np.ndarray]:
    """Write `n` dark PNGs, every `blob_every`-th with a white blob at a known place."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        box = (5 + i % 40, 7 + i % 30, 8, 6) if i % blob_every == 0 else None
        frame = blob_frame(size, size, box)
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
        frames.append(frame)
    return frames


def make_config(folder: Path, **pipeline: object) -> Config:
    """A Config reading `folder`, with pipeline overrides."""
    config = Config()
    config.source.kind = "folder"
    config.source.uri = str(folder)
    config.model.threads = 1
    for key, value in pipeline.items():
        setattr(config.pipeline, key, value)
    return config


def build(bundle: Bundle, config: Config, **kwargs: object) -> tuple[Pipeline, ListSink, PipelineStats]:
    """A pipeline over the config's source and the bundle, publishing into a ListSink."""
    stats = PipelineStats()
    sink = ListSink()
    source = open_source(config.source, stats=stats)
    backend = load_backend(bundle, config.model)
    pipeline = Pipeline(
        source, backend, [sink], config=config, model={"name": "tiny", "hash": bundle.short_hash},
        color_order="BGR", stats=stats, **kwargs,  # type: ignore[arg-type]
    )
    return pipeline, sink, stats


def answer_one_trigger(bundle: Bundle, config: Config, source: Source, stats: PipelineStats) -> tuple[Verdict, float]:
    """Send trigger P1 to a triggered pipeline over `source`: its one verdict, and seconds until it was published.

    The pipeline is stopped either way; closing the source is the caller's (a stand-in may need releasing first).
    """
    sink = ListSink()
    published = threading.Event()
    pipeline = Pipeline(
        source, load_backend(bundle, config.model), [sink], config=config,
        model={"name": "tiny", "hash": bundle.short_hash}, color_order="BGR", stats=stats,
        on_verdict=lambda _inspection: published.set(),
    )
    pipeline.start()
    try:
        received = time.monotonic()
        pipeline.trigger(Trigger("P1", received))
        timeout = config.pipeline.trigger_timeout_s
        assert published.wait(20), f"no verdict within 20 s of a trigger with trigger_timeout_s = {timeout:g}"
        answered_s = time.monotonic() - received
    finally:
        pipeline.stop()
        pipeline.join(10)
    (verdict,) = (i.verdict for i in sink.items)
    return verdict, answered_s


class TestPipelineContinuous:
    """Continuous mode."""
    def test_every_frame_one_verdict_in_order(self, bundle: Bundle, tmp_path: Path) -> None:
        """A folder of frames gives one verdict per frame, seq gap-free in file order, blobs failing where they are."""
        write_frames(tmp_path / "in", 30)
        pipeline, sink, stats = build(bundle, make_config(tmp_path / "in"))
        pipeline.run(drain_timeout=20)
        verdicts = [i.verdict for i in sink.items]
        assert [v.seq for v in verdicts] == list(range(30))
        assert [v.frame_id for v in verdicts] == list(range(30))
        assert [v.outcome for v in verdicts] == ["fail" if i % 3 == 0 else "pass" for i in range(30)]
        first = verdicts[0]
        assert len(first.regions) == 1
        assert first.regions[0].bbox == (5, 7, 8, 6)
        assert first.regions[0].area_px == 48
        assert stats.snapshot()["verdicts"] == {"pass": 20, "fail": 10, "error": 0}
        assert set(stats.last_beats()) == {"capture", "preprocess", "infer", "postprocess", "publish"}

    def test_batches_keep_order(self, bundle: Bundle, tmp_path: Path) -> None:
        """With max_batch 4 frames are judged in batches and still published one per frame in seq order."""
        write_frames(tmp_path / "in", 21)
        config = make_config(tmp_path / "in")
        config.model.max_batch = 4
        config.model.batch_wait_ms = 50
        (tmp_path / "in" / "0010.png").write_bytes(b"not a png")
        pipeline, sink, _ = build(bundle, config)
        pipeline.run(drain_timeout=20)
        verdicts = [i.verdict for i in sink.items]
        assert [v.seq for v in verdicts] == list(range(21))
        assert verdicts[10].outcome == "error" and "0010.png" in (verdicts[10].error or "")
        assert [v.outcome for v in verdicts if v.seq != 10] == [
            "fail" if i % 3 == 0 else "pass" for i in range(21) if i != 10
        ]

    def test_malformed_frames_are_error_verdicts(self, bundle: Bundle, tmp_path: Path) -> None:
        """Zero-size, 4-channel, 2-channel and 16-bit images each give an error verdict naming the cause."""
        folder = tmp_path / "in"
        folder.mkdir()
        cv2.imwrite(str(folder / "a_good.png"), blob_frame(64, 64))
        (folder / "b_zero.png").write_bytes(b"")
        cv2.imwrite(str(folder / "c_bgra.png"), np.zeros((64, 64, 4), np.uint8))
        np.save(folder / "d_ignored.npy", np.zeros(1))  # not matched by the glob
        cv2.imwrite(str(folder / "e_16bit.png"), np.zeros((64, 64, 3), np.uint16))
        cv2.imwrite(str(folder / "f_grey.png"), np.zeros((64, 64), np.uint8))
        cv2.imwrite(str(folder / "g_tiny.png"), np.zeros((1, 1, 3), np.uint8))
        config = make_config(folder)
        config.source.glob = "*.png"
        pipeline, sink, stats = build(bundle, config)
        pipeline.run(drain_timeout=20)
        got = {Path(i.verdict.error or "ok: x").name.split(":")[0]: i.verdict for i in sink.items}
        kinds = [i.verdict.outcome for i in sink.items]
        assert kinds == ["pass", "error", "error", "error", "pass", "pass"]
        errors = [i.verdict.error for i in sink.items if i.verdict.outcome == "error"]
        assert "b_zero.png" in errors[0] and "cannot read" in errors[0]
        assert "4 channels" in errors[1]
        assert "16-bit" in errors[2]
        assert got and stats.snapshot()["verdicts"]["error"] == 3
        schema = json.loads((Path(__file__).resolve().parents[2] / "edge" / "result.schema.json").read_text())
        for inspection in sink.items:
            jsonschema.validate(inspection.verdict.to_dict(), schema)

    def test_roi_outside_frame_is_error(self, bundle: Bundle, tmp_path: Path) -> None:
        """An ROI that does not fit the frame gives error verdicts saying so, and regions map back through the ROI."""
        folder = tmp_path / "in"
        folder.mkdir()
        big = np.full((100, 200, 3), 10, np.uint8)
        big[40:60, 120:140] = 255
        cv2.imwrite(str(folder / "a.png"), big)
        cv2.imwrite(str(folder / "b.png"), np.zeros((50, 50, 3), np.uint8))
        config = make_config(folder)
        config.source.roi = (100, 20, 64, 64)
        pipeline, sink, _ = build(bundle, config)
        pipeline.run(drain_timeout=20)
        first, second = (i.verdict for i in sink.items)
        assert first.outcome == "fail"
        assert first.regions[0].bbox == (120, 40, 20, 20)
        assert second.outcome == "error" and "reaches outside the 50x50 frame" in (second.error or "")

    def test_inference_exception_is_error_verdict(self, bundle: Bundle, tmp_path: Path) -> None:
        """A backend that raises during inference yields error verdicts for those frames and the pipeline goes on."""
        write_frames(tmp_path / "in", 6)
        pipeline, sink, _ = build(bundle, make_config(tmp_path / "in"))
        real_submit = pipeline.backend.submit
        calls = {"n": 0}

        def flaky_submit(slot: object, n: int) -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                msg = "simulated CUDA out of memory"
                raise RuntimeError(msg)
            real_submit(slot, n)  # type: ignore[arg-type]

        pipeline.backend.submit = flaky_submit  # type: ignore[method-assign]
        pipeline.run(drain_timeout=20)
        verdicts = [i.verdict for i in sink.items]
        assert [v.seq for v in verdicts] == list(range(6))
        assert verdicts[2].outcome == "error" and "simulated CUDA out of memory" in (verdicts[2].error or "")
        assert [v.outcome for v in verdicts[3:]] == ["fail", "pass", "pass"]

    def test_paced_source_skips_and_counts(self, bundle: Bundle, tmp_path: Path) -> None:
        """A camera-paced source faster than the pipeline skips frames, counts them, and seq stays gap-free."""
        write_frames(tmp_path / "in", 40)
        config = make_config(tmp_path / "in", queue_size=1)
        config.source.fps = 400
        pipeline, sink, stats = build(bundle, config)
        slow = threading.Event()

        def slow_publish(_inspection: Inspection) -> None:
            slow.wait(0.02)

        pipeline.on_verdict = slow_publish
        pipeline.run(drain_timeout=20)
        snap = stats.snapshot()
        verdicts = [i.verdict for i in sink.items]
        assert snap["frames_captured"] == 40
        assert snap["frames_skipped"] > 0
        assert len(verdicts) + snap["frames_skipped"] == 40
        assert [v.seq for v in verdicts] == list(range(len(verdicts)))
        assert len({v.frame_id for v in verdicts}) == len(verdicts)

    def test_max_frames_and_stop(self, bundle: Bundle, tmp_path: Path) -> None:
        """max_frames ends the stream after exactly N verdicts; a looping source stops on the stop event."""
        write_frames(tmp_path / "in", 5)
        config = make_config(tmp_path / "in")
        config.source.loop = True
        pipeline, sink, _ = build(bundle, config, max_frames=12)
        pipeline.run(drain_timeout=20)
        assert [i.verdict.seq for i in sink.items] == list(range(12))
        pipeline, sink, _ = build(bundle, config)
        stop = threading.Event()
        pipeline.on_verdict = lambda _inspection: stop.set() if len(sink.items) >= 8 else None  # past one loop
        pipeline.run(stop, drain_timeout=20)
        assert stop.is_set() and len(sink.items) >= 8
        assert [i.verdict.seq for i in sink.items] == list(range(len(sink.items)))


class TestPipelineTriggered:
    """Triggered mode (triggers injected directly)."""
    def test_each_trigger_one_verdict(self, bundle: Bundle, tmp_path: Path) -> None:
        """Each trigger gives exactly one verdict carrying its part_id, on a frame captured after the trigger."""
        write_frames(tmp_path / "in", 4)
        config = make_config(tmp_path / "in", mode="triggered")
        config.source.loop = True
        pipeline, sink, _ = build(bundle, config)
        all_in = threading.Event()
        pipeline.on_verdict = lambda _inspection: all_in.set() if len(sink.items) >= 10 else None
        pipeline.start()
        sent_at = {}
        for i in range(10):
            sent_at[f"P{i}"] = time.time()
            pipeline.trigger(Trigger(f"P{i}"))
        all_in.wait(30)
        pipeline.stop()
        assert pipeline.join(10)  # drained: a verdict beyond one per trigger would be in sink.items now
        verdicts = [i.verdict for i in sink.items]
        assert [v.part_id for v in verdicts] == [f"P{i}" for i in range(10)]
        assert [v.seq for v in verdicts] == list(range(10))
        assert all(v.ts >= sent_at[v.part_id] for v in verdicts)  # type: ignore[index]
        assert [v.outcome for v in verdicts[:4]] == ["fail", "pass", "pass", "fail"]

    def test_stale_late_and_flagged_triggers(self, bundle: Bundle, tmp_path: Path) -> None:
        """Stale and too-late triggers get errors, never a later part's frame; warnings are kept; all are settled.

        Each trigger is settled once, after its verdict reached the sinks.
        """
        write_frames(tmp_path / "in", 4)
        config = make_config(tmp_path / "in", mode="triggered", trigger_timeout_s=1.0)
        config.source.loop = True
        pipeline, sink, _ = build(bundle, config)
        settled: list[str] = []
        done = threading.Event()

        def settle(part: str) -> None:
            assert part in {i.verdict.part_id for i in sink.items}  # after its verdict was handed over
            settled.append(part)
            if len(settled) == 4:
                done.set()

        triggers = [
            Trigger("fresh", settle=lambda: settle("fresh")),
            Trigger("redelivered", stale="trigger redelivered by the broker", settle=lambda: settle("redelivered")),
            Trigger("late", received=time.monotonic() - 5.0, settle=lambda: settle("late")),
            Trigger("flagged", warning="part_id truncated", settle=lambda: settle("flagged")),
        ]
        for trigger in triggers:
            pipeline.trigger(trigger)
        pipeline.start()
        assert done.wait(20)
        pipeline.stop()
        assert pipeline.join(10)
        verdicts = {i.verdict.part_id: i.verdict for i in sink.items}
        assert verdicts["fresh"].outcome in {"pass", "fail"}
        assert verdicts["redelivered"].outcome == "error" and "redelivered" in (verdicts["redelivered"].error or "")
        assert verdicts["late"].outcome == "error" and "trigger_timeout_s" in (verdicts["late"].error or "")
        assert verdicts["flagged"].warning == "part_id truncated" and verdicts["flagged"].outcome in {"pass", "fail"}
        assert sorted(settled) == sorted(["fresh", "redelivered", "late", "flagged"])

    def test_triggers_accepted_before_stop_are_still_judged(self, bundle: Bundle, tmp_path: Path) -> None:
        """stop() with triggers queued: they are judged on frames (not errored) before capture ends."""
        write_frames(tmp_path / "in", 4)
        config = make_config(tmp_path / "in", mode="triggered")
        config.source.loop = True
        pipeline, sink, _ = build(bundle, config)
        for i in range(5):
            pipeline.trigger(Trigger(f"P{i}"))
        pipeline.start()
        pipeline.stop()
        assert pipeline.join(20)
        verdicts = [i.verdict for i in sink.items]
        assert [v.part_id for v in verdicts] == [f"P{i}" for i in range(5)]
        assert all(v.outcome in {"pass", "fail"} for v in verdicts), [v.error for v in verdicts]

    def test_no_frame_is_error_never_skipped(self, bundle: Bundle, tmp_path: Path) -> None:
        """Triggers after the source ran dry, or still queued at stop, get error verdicts: no part is dropped."""
        write_frames(tmp_path / "in", 2)
        config = make_config(tmp_path / "in", mode="triggered")
        pipeline, sink, _ = build(bundle, config)
        for i in range(5):
            pipeline.trigger(Trigger(f"P{i}"))
        pipeline.run(drain_timeout=10)
        verdicts = [i.verdict for i in sink.items]
        assert [v.part_id for v in verdicts] == [f"P{i}" for i in range(5)]
        assert [v.outcome for v in verdicts] == ["fail", "pass", "error", "error", "error"]
        assert "no more frames" in (verdicts[2].error or "")
        assert "not served" in (verdicts[3].error or "")
        assert [v.frame_id for v in verdicts] == list(range(5))  # no-frame errors are numbered like frames

    def test_trigger_timeout_is_error(self, bundle: Bundle, tmp_path: Path) -> None:
        """A connected camera that sends nothing: the trigger's error verdict comes once trigger_timeout_s passed.

        Not before it, and not only when the camera is declared stalled much later.
        """
        release = threading.Event()

        class Silent:
            """An opened camera whose read blocks (no frames), until the test ends."""

            def isOpened(self) -> bool:  # OpenCV's name
                return True

            def read(self) -> tuple[bool, None]:
                release.wait(60)
                return False, None

            def release(self) -> None:
                pass

        config = make_config(tmp_path, mode="triggered", trigger_timeout_s=0.3)
        config.source.kind = "rtsp"
        config.source.stall_timeout_s = 60.0  # the outage path must not be what answers the trigger
        stats = PipelineStats()
        source = LiveSource(config.source, Silent, stats=stats)
        try:
            verdict, answered_s = answer_one_trigger(bundle, config, source, stats)
        finally:
            threading.Timer(0.2, release.set).start()  # once closed: the reader exits without reporting an outage
            source.close()  # (close waits for the reader to leave its read)
        assert (verdict.part_id, verdict.outcome, verdict.seq) == ("P1", "error", 0)
        assert "no frame from camera cam0 within 0.3 s of the trigger" in (verdict.error or "")
        assert answered_s >= 0.3

    def test_software_trigger_without_exposure_is_error(self, bundle: Bundle, tmp_path: Path) -> None:
        """A software-triggered camera fired for the part whose exposure never comes: error once trigger_timeout_s passed.

        (A lost trigger command or a frame stuck in the camera.) Fired exactly once, answered not before the timeout.
        """
        never = threading.Event()

        class Unexposed:
            """Takes TriggerSoftware, never delivers the exposure."""

            name, live, finished, dropped = "cam0", True, False, 0

            def __init__(self) -> None:
                self.frames = FrameFactory("cam0")
                self.fired = 0

            def read(self, timeout: float) -> None:
                never.wait(timeout)

            def fire(self) -> None:
                self.fired += 1

            def exposure(self, timeout: float) -> None:
                never.wait(timeout)

            def error_frame(self, error: str) -> Frame:
                return self.frames.make(None, error=error)

            def close(self) -> None:
                pass

        config = make_config(tmp_path, mode="triggered", trigger_timeout_s=0.3)
        config.source.kind = "genicam"  # what source.trigger needs; the source itself is the stand-in above
        config.source.trigger = "software"
        source = Unexposed()
        verdict, answered_s = answer_one_trigger(bundle, config, source, PipelineStats())  # type: ignore[arg-type]
        assert (verdict.part_id, verdict.outcome, verdict.seq) == ("P1", "error", 0)
        assert "no exposure from camera cam0 within 0.3 s of the trigger" in (verdict.error or "")
        assert source.fired == 1
        assert answered_s >= 0.3


class TestReadmeVerdict:
    """The verdict example in README.md is what the daemon sends."""

    def test_example_matches_schema_and_hash(self, bundle: Bundle) -> None:
        """The README's verdict JSON validates against the schema and carries a hash as long as short_hash."""
        root = Path(__file__).resolve().parents[2]
        readme = (root / "README.md").read_text()
        block = readme.split("A verdict on `<prefix>/result`:", 1)[1].split("```json", 1)[1].split("```", 1)[0]
        example = json.loads(block)
        jsonschema.validate(example, json.loads((root / "edge" / "result.schema.json").read_text()))
        assert len(example["model"]["hash"]) == len(bundle.short_hash) == 12
        assert all(c in "0123456789abcdef" for c in example["model"]["hash"])


class TestSeqCounter:
    """SeqCounter (edge/seq.py)."""

    def test_clean_stop_continues_exactly(self, tmp_path: Path) -> None:
        """After a clean stop the next run continues with the next number."""
        counter = SeqCounter(tmp_path / "seq.json")
        for _ in range(5):
            counter.publishing(counter.take())
        counter.close()
        assert SeqCounter(tmp_path / "seq.json").take() == 5

    def test_crash_same_boot_continues_after_last_published(self, tmp_path: Path) -> None:
        """A process crash resumes right after the last verdict handed to the sinks (unpublished ones are reused)."""
        counter = SeqCounter(tmp_path / "seq.json")
        issued = [counter.take() for _ in range(8)]
        for seq in issued[:6]:
            counter.publishing(seq)
        del counter  # no close(): killed
        assert SeqCounter(tmp_path / "seq.json").take() == 6

    def test_unclean_other_boot_jumps_past_reservation(self, tmp_path: Path) -> None:
        """After a power cut (unclean state from another boot) numbering skips past the fsynced reservation."""
        counter = SeqCounter(tmp_path / "seq.json")
        for _ in range(3):
            counter.publishing(counter.take())
        state = json.loads((tmp_path / "seq.json").read_text())
        (tmp_path / "seq.json").write_text(json.dumps(state | {"boot": "an-earlier-boot"}))
        assert SeqCounter(tmp_path / "seq.json").take() == SeqCounter.BLOCK
        (tmp_path / "seq.json").write_text("{torn")  # unreadable: the reservation (now 2 blocks) is the floor
        assert SeqCounter(tmp_path / "seq.json").take() == 2 * SeqCounter.BLOCK


class TestPipelineCamera:
    """Live camera sources in the pipeline."""
    def test_camera_outage_is_an_error_verdict(self, bundle: Bundle, tmp_path: Path) -> None:
        """A camera that cannot be reached shows in the verdict stream as an error verdict, not silence."""
        config = make_config(tmp_path / "missing.avi")
        config.source.kind = "rtsp"  # FFmpeg on a missing file: a camera that is not there
        config.source.reconnect_min_s = 0.05
        config.source.reconnect_max_s = 0.1
        pipeline, sink, stats = build(bundle, config, max_frames=1)
        pipeline.run(drain_timeout=10)
        pipeline.source.close()
        (verdict,) = (i.verdict for i in sink.items)
        assert verdict.outcome == "error" and "camera cam0 lost: cannot open" in (verdict.error or "")
        assert stats.snapshot()["camera_outages"] == 1


class LosingSink(ListSink):
    """A sink that can neither keep nor deliver verdicts from seq `from_seq` on (what a full disk + no broker is)."""

    def __init__(self, from_seq: int) -> None:
        super().__init__()
        self.from_seq = from_seq

    def publish(self, inspection: Inspection) -> None:
        """Keep the early ones; lose the rest."""
        if inspection.verdict.seq >= self.from_seq:
            msg = f"verdict seq {inspection.verdict.seq} lost"
            raise VerdictLostError(msg)
        super().publish(inspection)


def test_a_lost_verdict_stops_admitting_frames(bundle: Bundle, tmp_path: Path) -> None:
    """A sink raising VerdictLostError: the pipeline fails, admits nothing more, and records the lost seqs as used."""
    write_frames(tmp_path / "in", 4)
    config = make_config(tmp_path / "in")
    config.source.loop = True
    stats = PipelineStats()
    source = open_source(config.source, stats=stats)
    backend = load_backend(bundle, config.model)
    sink = LosingSink(from_seq=5)
    seq = SeqCounter(tmp_path / "seq.json")
    pipeline = Pipeline(source, backend, [sink], config=config, model={"name": "tiny", "hash": "x"},
                        color_order="BGR", stats=stats, seq=seq)
    pipeline.start()
    assert pipeline.join(20)  # it stopped by itself
    assert isinstance(pipeline.failed, VerdictLostError)
    assert [i.verdict.seq for i in sink.items] == list(range(5))
    assert pipeline.lost and pipeline.lost[0] == 5 and pipeline.lost == list(range(5, 5 + len(pipeline.lost)))
    assert pipeline.issued == 5 + len(pipeline.lost)  # admitted: kept + lost, nothing after the stop
    seq.close(clean=False)
    assert SeqCounter(tmp_path / "seq.json").next == pipeline.issued  # a lost seq is never reused
    assert stats.snapshot()["verdicts_lost"] == len(pipeline.lost)
