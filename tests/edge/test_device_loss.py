"""The GPU path through the real Pipeline and daemon: a lost device, slot release, teardown.

The backend is the real RingBackend over the Executor seam (tests/edge/backends/test_trt.py's NumpyExecutor: numpy
work on a thread per submission, as a stream would run it), so the ring, the pipeline's stages and the daemon's
shutdown run exactly as over TensorRT; only the CUDA work is numpy.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import edge.daemon
import edge.pipeline
from edge.backends.ring import RingBackend
from edge.bundle import Bundle
from edge.daemon import run_daemon
from edge.errors import DeviceLostError
from edge.pipeline import Pipeline
from edge.sources import open_source
from edge.stats import PipelineStats
from tests.bundles import make_tiny_bundle
from tests.edge.backends.test_trt import H, NumpyExecutor, W
from tests.edge.test_daemon import PREFIX, write_config, write_frames
from tests.edge.test_pipeline import ListSink, make_config

LOST = "cuEventSynchronize failed: an illegal memory access was encountered"


class FailingExecutor(NumpyExecutor):
    """The numpy seam, losing the device on submission number `fail_at` (and failing every call after it)."""

    def __init__(self, slots: int, max_batch: int, fail_at: int) -> None:
        super().__init__(slots, max_batch)
        self.fail_at, self.submissions = fail_at, 0

    def enqueue(self, slot: int, n: int) -> None:
        self.submissions += 1
        if self.submissions >= self.fail_at:
            self.calls.append(("enqueue", slot))
            raise DeviceLostError(LOST)
        super().enqueue(slot, n)


class CountingExecutor(NumpyExecutor):
    """The numpy seam, signalling its third submission."""

    def __init__(self, slots: int, max_batch: int) -> None:
        super().__init__(slots, max_batch)
        self.third, self.submissions = threading.Event(), 0

    def enqueue(self, slot: int, n: int) -> None:
        super().enqueue(slot, n)
        self.submissions += 1
        if self.submissions >= 3:
            self.third.set()


def ring_backend(executor: NumpyExecutor, slots: int = 2, max_batch: int = 1) -> RingBackend:
    return RingBackend(executor, name="numpy-gpu", max_batch=max_batch, input_shape=(H, W, 3), slots=slots)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The tiny bundle (its ONNX graph is not run here: the seam computes the same rule)."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"), height=H, width=W)


def pipeline_over(backend: RingBackend, folder: Path) -> tuple[Pipeline, ListSink]:
    config = make_config(folder)
    stats = PipelineStats()
    sink = ListSink()
    pipeline = Pipeline(open_source(config.source, stats=stats), backend, [sink], config=config,
                        model={"name": "tiny", "hash": "0" * 12}, color_order="BGR", stats=stats)
    return pipeline, sink


class TestPipelineDeviceLoss:
    """Issue #12 item 4: every admitted frame gets a verdict after the GPU is lost."""

    def test_every_admitted_frame_gets_one_verdict(self, tmp_path: Path) -> None:
        """The third submission loses the device: later frames are `error` verdicts naming it, none is lost."""
        write_frames(tmp_path / "in", 12)
        backend = ring_backend(FailingExecutor(2, 1, fail_at=3))
        pipeline, sink = pipeline_over(backend, tmp_path / "in")
        pipeline.run(drain_timeout=20)
        verdicts = [i.verdict for i in sink.items]
        assert pipeline.failed is None
        assert pipeline.issued == 12 and [v.seq for v in verdicts] == list(range(12))
        assert all(v.outcome in ("pass", "fail") for v in verdicts[:2])
        assert all(v.outcome == "error" and "illegal memory access" in (v.error or "") for v in verdicts[2:])
        assert isinstance(backend.fatal, DeviceLostError)
        backend.close()
        assert backend.executor.freed is False  # type: ignore[attr-defined]  # no CUDA frees on a lost context


class TestSlotRelease:
    """Issue #12 item 5: a slot is free again once its outputs are copied out, not after post-processing."""

    def test_slot_is_reused_while_its_batch_is_post_processed(self, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """With 2 slots and the first batch's post-processing held, a third batch is still submitted."""
        write_frames(tmp_path / "in", 6)
        executor = CountingExecutor(2, 1)
        pipeline, sink = pipeline_over(ring_backend(executor), tmp_path / "in")
        held, release = threading.Event(), threading.Event()
        real = edge.pipeline.find_regions

        def hold_first(*args: Any, **kwargs: Any) -> Any:
            if not held.is_set():
                held.set()
                assert release.wait(30)
            return real(*args, **kwargs)

        monkeypatch.setattr(edge.pipeline, "find_regions", hold_first)
        pipeline.start()
        try:
            assert held.wait(10)
            assert executor.third.wait(10), f"{executor.calls} while batch 0 was post-processed: its slot was held"
        finally:
            release.set()
            pipeline.stop()
            assert pipeline.join(20)
        assert [i.verdict.seq for i in sink.items] == list(range(len(sink.items)))


class TestDaemonDeviceLoss:
    """Issue #12 item 10 / #18: a device loss ends the daemon with the documented exit code, verdicts intact."""

    def test_device_loss_exits_70_with_every_verdict_published(self, bundle: Bundle, broker: Any,
                                                               mqtt_collector: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Every seq issued reaches the broker (errors after the loss); exit 70 as README and unit say, not 1."""
        from edge.config import load_config

        write_frames(tmp_path / "frames", 40)
        config = load_config(write_config(tmp_path, broker, bundle, tmp_path / "frames",
                                          source={"fps": 50.0}), base_dir=tmp_path)
        executor = FailingExecutor(2, 1, fail_at=4)
        monkeypatch.setattr(edge.daemon, "load_backend", lambda _bundle, _model: ring_backend(executor))
        results = mqtt_collector(f"{PREFIX}/result")
        outcome = run_daemon(config, base_dir=tmp_path)
        assert DeviceLostError.exit_code == 70
        assert outcome["exit_code"] == DeviceLostError.exit_code
        published = outcome["published"]
        assert outcome["drained"] and published >= 4 and sum(outcome["verdicts"].values()) == published
        assert results.wait_for(published, timeout=20)
        got = results.json()
        assert [r["seq"] for r in got] == list(range(published))
        assert all(r["verdict"] == "error" for r in got[3:])
        assert executor.closed and executor.freed is False  # type: ignore[attr-defined]


class TestDaemonTeardown:
    """Issue #12 item 7: the backend is freed only after every stage thread has joined."""

    def test_backend_left_alone_when_a_stage_does_not_drain(self, bundle: Bundle, broker: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
        """A post-processing stage stuck past the shutdown budget: exit 1, and the slots are not freed under it."""
        from edge.config import load_config

        write_frames(tmp_path / "frames", 10)
        config = load_config(write_config(tmp_path, broker, bundle, tmp_path / "frames",
                                          pipeline={"shutdown_timeout_s": 0.5}), base_dir=tmp_path)
        executor = NumpyExecutor(2, 1)
        monkeypatch.setattr(edge.daemon, "load_backend", lambda _bundle, _model: ring_backend(executor))
        held, release = threading.Event(), threading.Event()

        def stuck(*_args: Any, **_kwargs: Any) -> Any:
            held.set()
            release.wait(60)
            return ()

        monkeypatch.setattr(edge.pipeline, "find_regions", stuck)
        stop = threading.Event()
        outcome: dict[str, Any] = {}
        daemon = threading.Thread(target=lambda: outcome.update(run_daemon(config, stop=stop, base_dir=tmp_path)))
        daemon.start()
        try:
            assert held.wait(20)
            stop.set()
            daemon.join(30)
            assert not daemon.is_alive()
            assert outcome["exit_code"] == 1 and not outcome["drained"]
            assert not executor.closed, "the backend was freed while a stage still used it"
        finally:
            release.set()
