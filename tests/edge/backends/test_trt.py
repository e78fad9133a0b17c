"""TensorRT backend: engine checks, buffer planning, the slot ring and the backend on a numpy executor.

Everything here but `TestOnGpu` runs without TensorRT, pycuda or a GPU: the ring and the backend are driven
through the same `Executor` seam the CUDA executor implements, with plain numpy buffers filled on worker threads
(so "the event fired" is something a test controls).
"""

from __future__ import annotations

import enum
import importlib.util
import queue
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.backends import cuda_mem as cm
from edge.backends import load_backend
from edge.backends.ring import DONE, FILLING, FREE, IN_FLIGHT, Ring, RingBackend
from edge.backends.trt import (
    TensorSpec,
    buffer_rows,
    check_contract,
    check_engine_info,
    effective_max_batch,
    plan_buffers,
    profile_batch,
    run_batch,
    version_key,
)
from edge.bundle import EngineInfo, write_bundle
from edge.config import ModelConfig
from edge.errors import BackendError, BundleError, DeviceLostError
from tests.bundles import make_tiny_bundle

H = W = 16
THRESHOLD = 0.5


# stand-ins ---------------------------------------------------------------------------------------------------------
class Mode(enum.Enum):
    """TensorIOMode stand-in (members carry `.name` like TensorRT's pybind11 enums)."""

    INPUT = 1
    OUTPUT = 2


class DType(enum.Enum):
    """DataType stand-in."""

    UINT8 = 1
    FLOAT = 2
    HALF = 3
    BF16 = 4


class FakeEngine:
    """Just the ICudaEngine calls plan_buffers/profile_batch make (TensorRT 10/11 names)."""

    def __init__(self, tensors: dict[str, tuple[Mode, DType, tuple[int, ...]]], profile=None) -> None:
        self.tensors = tensors
        self.profile = profile or {}
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        """Name of I/O tensor i."""
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        """INPUT or OUTPUT."""
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        """The tensor's DataType."""
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        """Shape with -1 for dynamic dimensions."""
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, profile):
        """(min, opt, max) shapes in optimisation profile `profile`."""
        assert profile == 0
        return self.profile[name]


def contract_engine(h=H, w=W, map_dtype=DType.FLOAT, max_batch=4) -> FakeEngine:
    """An engine with the bundle contract's tensors and a dynamic batch 1..max_batch."""
    return FakeEngine(
        {
            "image": (Mode.INPUT, DType.UINT8, (-1, h, w, 3)),
            "score": (Mode.OUTPUT, map_dtype, (-1,)),
            "anomaly_map": (Mode.OUTPUT, map_dtype, (-1, 1, h, w)),
            "mask": (Mode.OUTPUT, DType.UINT8, (-1, 1, h, w)),
        },
        profile={"image": ((1, h, w, 3), (2, h, w, 3), (max_batch, h, w, 3))},
    )


def reference(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the tiny bundle's graph computes (tests/bundles.py)."""
    amap = (images.astype(np.float32).mean(axis=-1) / 255.0 / THRESHOLD)[:, None]
    return amap.max(axis=(1, 2, 3)), amap, (amap >= 1.0).astype(np.uint8)


class NumpyExecutor:
    """The Executor seam on numpy: enqueue computes on a worker thread once the slot's gate opens.

    The worker reads the slot's input only when it runs (as an H2D copy on a stream would), so a slot reused
    before its "event" fired shows up as wrong results.
    """

    def __init__(self, slots: int, max_batch: int, *, gated: bool = False, out_dtype=np.float32, delay=0.0) -> None:
        self.inputs = [np.zeros((max_batch, H, W, 3), np.uint8) for _ in range(slots)]
        self.outputs = [
            {
                "score": np.zeros(max_batch, out_dtype),
                "anomaly_map": np.zeros((max_batch, 1, H, W), out_dtype),
                "mask": np.zeros((max_batch, 1, H, W), np.uint8),
            }
            for _ in range(slots)
        ]
        self.gates = [threading.Event() for _ in range(slots)]
        self.done = [threading.Event() for _ in range(slots)]
        for gate, done in zip(self.gates, self.done, strict=True):
            done.set()
            if not gated:
                gate.set()
        self.delay = delay
        self.fail_next: Exception | None = None
        self.fail_sync: Exception | None = None
        self.calls: list[tuple[str, int]] = []
        self.closed = False

    def input_buffer(self, slot):
        """The slot's input array."""
        return self.inputs[slot]

    def output_buffers(self, slot):
        """The slot's output arrays."""
        return self.outputs[slot]

    def enqueue(self, slot, n):
        """Start the work on a thread (or fail as told)."""
        self.calls.append(("enqueue", slot))
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.done[slot].clear()
        threading.Thread(target=self._work, args=(slot, n), daemon=True).start()

    def _work(self, slot, n):
        assert self.gates[slot].wait(5)
        time.sleep(self.delay * random.random())
        for name, value in zip(("score", "anomaly_map", "mask"), reference(self.inputs[slot][:n]), strict=True):
            self.outputs[slot][name][:n] = value
        self.done[slot].set()

    def synchronize(self, slot):
        """Wait for the slot's work (or fail as told)."""
        self.calls.append(("synchronize", slot))
        if self.fail_sync is not None:
            raise self.fail_sync
        assert self.done[slot].wait(5), "work never finished"

    def close(self, free=True):
        """Remember that (and how) the backend closed the executor."""
        self.closed, self.freed = True, free


def make_backend(slots=2, max_batch=2, **kwargs) -> tuple[RingBackend, NumpyExecutor]:
    """A RingBackend over a fresh NumpyExecutor."""
    executor = NumpyExecutor(slots, max_batch, **kwargs)
    backend = RingBackend(executor, name="numpy", max_batch=max_batch, input_shape=(H, W, 3), slots=slots)
    return backend, executor


def frames(levels) -> np.ndarray:
    """Uniform frames, one per grey level."""
    return np.stack([np.full((H, W, 3), level, np.uint8) for level in levels])


@pytest.fixture
def engine_bundle(tmp_path: Path):
    """A tiny bundle with a (fake) engine recorded for TensorRT 10.3.0 on an Orin."""
    make_tiny_bundle(tmp_path, height=H, width=W, threshold=THRESHOLD)
    (tmp_path / "model.engine").write_bytes(b"not really an engine")
    from edge.bundle import load_bundle

    meta = load_bundle(tmp_path).meta
    info = EngineInfo(file="model.engine", precision="fp16", tensorrt_version="10.3.0", gpu_name="Orin",
                      compute_capability="8.7", max_batch=4, opt_batch=2)
    return write_bundle(tmp_path, meta.model_copy(update={"engine": info}))


GPU = cm.DeviceInfo(0, "Orin", "8.7", 8 << 30, "12.2")


# engine checks -----------------------------------------------------------------------------------------------------
class TestVersionKey:
    """TensorRT version strings reduced to what engine compatibility depends on."""

    @pytest.mark.parametrize(
        ("version", "key"),
        [
            ("10.3.0", (10, 3, 0)),
            ("10.3.0.26", (10, 3, 0)),  # the build number does not change engine compatibility
            ("11.0.0.post1", (11, 0, 0)),
        ],
    )
    def test_keys(self, version, key):
        """Versions compare on major.minor.patch."""
        assert version_key(version) == key


class TestCheckEngineInfo:
    """The bundle.json engine record against this box's TensorRT and GPU."""

    def test_matching_engine_is_accepted(self, engine_bundle):
        """Same TensorRT version (other build number) and same GPU: the engine file name comes back."""
        assert check_engine_info(engine_bundle, "10.3.0.30", GPU) == "model.engine"

    def test_bundle_without_engine_says_how_to_build_one(self, tmp_path):
        """A bundle with no engine is refused with the command that builds one."""
        bundle = make_tiny_bundle(tmp_path, height=H, width=W)
        with pytest.raises(BundleError, match=r"no TensorRT engine.*inspectd export --engine"):
            check_engine_info(bundle, "10.3.0")

    def test_other_tensorrt_version_is_refused(self, engine_bundle):
        """An engine from TensorRT 10.3 does not load on 10.7; the message names both and says to rebuild."""
        with pytest.raises(BundleError, match=r"TensorRT 10\.3\.0, this box has TensorRT 10\.7\.0.*export --engine"):
            check_engine_info(engine_bundle, "10.7.0")

    @pytest.mark.parametrize(
        "gpu",
        [
            cm.DeviceInfo(0, "Orin", "7.2", 8 << 30, "12.2"),  # other compute capability
            cm.DeviceInfo(0, "NVIDIA GeForce RTX 4090", "8.7", 24 << 30, "12.2"),  # other GPU, same cc
        ],
    )
    def test_other_gpu_is_refused(self, engine_bundle, gpu):
        """An engine built for another GPU is refused naming both GPUs."""
        with pytest.raises(BundleError, match=r"built for Orin \(compute capability 8\.7\).*export --engine"):
            check_engine_info(engine_bundle, "10.3.0", gpu)

    def test_engine_not_hash_listed_is_refused(self, engine_bundle):
        """An engine file that bundle.json does not list (so nothing checked its hash) is refused."""
        files = {k: v for k, v in engine_bundle.meta.files.items() if k != "model.engine"}
        bundle = engine_bundle.model_copy(update={"meta": engine_bundle.meta.model_copy(update={"files": files})})
        with pytest.raises(BundleError, match="not listed"):
            check_engine_info(bundle, "10.3.0")


class TestPlanBuffers:
    """plan_buffers: one TensorSpec per I/O tensor of the engine."""

    def test_contract_engine_is_planned_at_max_batch(self):
        """Names, modes, numpy dtypes, shapes at the max batch and byte sizes come from the engine."""
        specs = {s.name: s for s in plan_buffers(contract_engine(), max_batch=4)}
        assert specs["image"] == TensorSpec("image", True, np.dtype(np.uint8), (4, H, W, 3))
        assert specs["score"] == TensorSpec("score", False, np.dtype(np.float32), (4,))
        assert specs["mask"].shape == (4, 1, H, W) and not specs["mask"].is_input
        assert specs["anomaly_map"].nbytes() == 4 * H * W * 4
        assert specs["anomaly_map"].nbytes(batch=1) == H * W * 4
        assert specs["image"].nbytes(batch=3) == 3 * H * W * 3

    def test_fp16_outputs_are_planned_as_float16(self):
        """An engine from an FP16 graph with half outputs gets float16 host buffers."""
        specs = {s.name: s for s in plan_buffers(contract_engine(map_dtype=DType.HALF), max_batch=2)}
        assert specs["anomaly_map"].dtype == np.float16

    def test_enum_without_name_attribute(self):
        """Enum values are read by name, or from their str() when a binding has no `.name`."""
        engine = contract_engine()

        class StrOnly:
            def __str__(self):
                return "TensorIOMode.INPUT"

        engine.tensors["image"] = (StrOnly(), DType.UINT8, (-1, H, W, 3))
        specs = {s.name: s for s in plan_buffers(engine, max_batch=1)}
        assert specs["image"].is_input

    def test_unsupported_dtype_is_refused(self):
        """A BF16 tensor (no numpy dtype) is refused with a rebuild hint."""
        engine = contract_engine(map_dtype=DType.BF16)
        with pytest.raises(BundleError, match=r"dtype BF16.*export --engine"):
            plan_buffers(engine, max_batch=1)

    def test_dynamic_non_batch_dimension_is_refused(self):
        """Only the batch may be dynamic: a data-dependent output size cannot be planned."""
        engine = contract_engine()
        engine.tensors["score"] = (Mode.OUTPUT, DType.FLOAT, (-1, -1))
        with pytest.raises(BundleError, match="only the batch dimension"):
            plan_buffers(engine, max_batch=1)


class TestProfileBatch:
    """The image input's batch range from the optimisation profile."""

    def test_dynamic_batch_comes_from_the_profile(self):
        """(min, opt, max) batch of the image input's optimisation profile."""
        assert profile_batch(contract_engine(max_batch=8)) == (1, 2, 8)

    def test_static_engine_reports_its_fixed_batch(self):
        """An engine built with a fixed batch has that batch as min, opt and max."""
        engine = contract_engine()
        engine.tensors["image"] = (Mode.INPUT, DType.UINT8, (3, H, W, 3))
        assert profile_batch(engine) == (3, 3, 3)


class TestEffectiveMaxBatch:
    """model.max_batch against the engine profile."""

    @pytest.mark.parametrize(
        ("asked", "profile", "expected"),
        [
            (4, (1, 2, 8), 4),  # within the profile
            (16, (1, 2, 8), 8),  # more than the engine takes: clamped
            (1, (1, 1, 1), 1),  # batch-1 engine
        ],
    )
    def test_clamps_to_the_profile(self, asked, profile, expected):
        """model.max_batch is limited to the engine's profile max."""
        assert effective_max_batch(asked, profile) == expected

    def test_below_profile_minimum_is_padded(self):
        """An engine whose profile starts above the asked batch runs it padded: buffers hold the engine's minimum."""
        assert effective_max_batch(1, (2, 2, 4)) == 1
        assert buffer_rows(1, (2, 2, 4)) == 2
        assert run_batch(1, rows=2, min_batch=2, fixed=False) == 2


class TestCheckContract:
    """The engine's tensors against the bundle contract."""

    def test_contract_engine_passes(self, engine_bundle):
        """uint8 image in, float score/map and uint8 mask out, at the bundle's H x W: accepted, as planned."""
        specs = plan_buffers(contract_engine(), max_batch=2)
        check_contract(specs, engine_bundle)
        assert {s.name: (s.is_input, s.dtype.name, s.shape) for s in specs} == {
            "image": (True, "uint8", (2, H, W, 3)),
            "score": (False, "float32", (2,)),
            "anomaly_map": (False, "float32", (2, 1, H, W)),
            "mask": (False, "uint8", (2, 1, H, W)),
        }
        for name in ("image", "score", "anomaly_map", "mask"):  # and each tensor is needed: without it, refused
            engine = contract_engine()
            del engine.tensors[name]
            engine.num_io_tensors = 3
            with pytest.raises(BundleError, match=f"'{name}' is missing"):
                check_contract(plan_buffers(engine, max_batch=2), engine_bundle)

    @pytest.mark.parametrize(
        ("tensor", "entry", "match"),
        [
            ("image", (Mode.INPUT, DType.FLOAT, (-1, H, W, 3)), "'image' is float32"),  # float input: wrong graph
            ("image", (Mode.INPUT, DType.UINT8, (-1, H, 2 * W, 3)), r"'image' is uint8 \[16, 32, 3\]"),  # other size
            ("mask", (Mode.OUTPUT, DType.FLOAT, (-1, 1, H, W)), "'mask' is float32"),  # mask not uint8
        ],
    )
    def test_mismatch_is_refused(self, engine_bundle, tensor, entry, match):
        """An engine that is not the bundle contract is refused naming the tensor."""
        engine = contract_engine()
        engine.tensors[tensor] = entry
        if tensor == "image":
            engine.profile["image"] = tuple((b, *entry[2][1:]) for b in (1, 2, 4))
        with pytest.raises(BundleError, match=match):
            check_contract(plan_buffers(engine, max_batch=2), engine_bundle)

    def test_missing_output_is_refused(self, engine_bundle):
        """An engine without the mask output (uncalibrated graph) is refused."""
        engine = contract_engine()
        del engine.tensors["mask"]
        engine.num_io_tensors = 3
        with pytest.raises(BundleError, match="'mask' is missing"):
            check_contract(plan_buffers(engine, max_batch=2), engine_bundle)


# ring --------------------------------------------------------------------------------------------------------------
class TestRing:
    """Slot bookkeeping on its own."""

    def test_slots_go_round_robin(self):
        """Slots are handed out in ring order."""
        ring = Ring(3)
        assert [ring.acquire(), ring.acquire(), ring.acquire()] == [0, 1, 2]
        assert ring.states == [FILLING] * 3

    def test_acquire_blocks_until_the_slot_is_released(self):
        """With every slot busy, acquire waits for the next one in order to be released."""
        ring = Ring(2)
        ring.acquire(), ring.acquire()
        with pytest.raises(BackendError, match="no free slot"):
            ring.acquire(timeout=0.05)
        got = []
        thread = threading.Thread(target=lambda: got.append(ring.acquire(timeout=5)))
        thread.start()
        ring.release(1)  # not the next in order: acquire keeps waiting for slot 0
        time.sleep(0.05)
        assert got == []
        ring.release(0)
        thread.join(5)
        assert got == [0]

    def test_in_flight_slot_cannot_be_released(self):
        """The ring never frees a slot whose work may still be writing into it."""
        ring = Ring(2)
        i = ring.acquire()
        ring.submitted(i)
        with pytest.raises(BackendError, match="in flight"):
            ring.release(i)

    def test_waits_must_follow_submission_order(self):
        """Waiting on a later submission first is refused: verdicts keep frame order."""
        ring = Ring(2)
        a, b = ring.acquire(), ring.acquire()
        ring.submitted(a), ring.submitted(b)
        with pytest.raises(BackendError, match="out of order"):
            ring.waiting(b)
        ring.waiting(a)
        ring.done(a)
        ring.waiting(b)

    def test_failed_submission_is_not_awaited(self):
        """A submission that failed stays in flight (to be drained) but does not block later waits."""
        ring = Ring(2)
        a, b = ring.acquire(), ring.acquire()
        ring.submitted(a, ok=False)
        ring.submitted(b)
        ring.waiting(b)
        assert ring.states == [IN_FLIGHT, IN_FLIGHT]

    def test_close_wakes_a_blocked_acquire(self):
        """Closing the ring ends a waiting acquire with BackendError instead of hanging shutdown."""
        ring = Ring(1)
        ring.acquire()
        errors = []

        def acquire():
            try:
                ring.acquire(timeout=5)
            except BackendError as exc:
                errors.append(str(exc))

        thread = threading.Thread(target=acquire)
        thread.start()
        time.sleep(0.05)
        ring.close()
        thread.join(5)
        assert errors == ["backend closed"]


class TestRingBackend:
    """The Backend protocol over the numpy executor."""

    def test_infer_matches_reference_in_order(self):
        """infer() over more images than slots x batch returns every result, in input order."""
        backend, _ = make_backend(slots=2, max_batch=3, delay=0.005)
        images = frames(range(0, 250, 10))
        out = backend.infer(images)
        score, amap, mask = reference(images)
        np.testing.assert_allclose(out.score, score, rtol=1e-6)
        np.testing.assert_allclose(out.anomaly_map, amap, rtol=1e-6)
        np.testing.assert_array_equal(out.mask, mask)
        assert backend.ring.states == [FREE, FREE]

    def test_slot_is_not_reused_before_its_event_fired(self):
        """A third acquire on two slots waits until slot 0's work finished and it was released."""
        backend, executor = make_backend(slots=2, max_batch=1, gated=True)
        slots = []
        for level in (50, 200):
            slot = backend.acquire()
            slot.input[0] = level
            backend.submit(slot, 1)
            slots.append(slot)
        got: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: got.put(backend.acquire()), daemon=True).start()
        time.sleep(0.05)
        assert got.empty() and backend.ring.states == [IN_FLIGHT, IN_FLIGHT]
        executor.gates[0].set()
        out = backend.wait(slots[0])
        assert got.empty(), "slot 0 handed out before release"
        assert out.score[0] == pytest.approx(50 / 255 / THRESHOLD)
        backend.release(slots[0])
        assert got.get(timeout=5).index == 0
        executor.gates[1].set()
        assert backend.wait(slots[1]).score[0] == pytest.approx(200 / 255 / THRESHOLD)

    def test_three_stage_threads_keep_frame_order(self):
        """Preprocess, infer and postprocess on their own threads (as the pipeline runs them) keep frame order."""
        backend, _ = make_backend(slots=3, max_batch=2, delay=0.003)
        levels = list(range(0, 240, 6))
        to_infer: queue.Queue = queue.Queue()
        to_post: queue.Queue = queue.Queue()
        scores: list[float] = []

        def preprocess():
            for start in range(0, len(levels), 2):
                chunk = levels[start : start + 2]
                slot = backend.acquire()
                slot.input[: len(chunk)] = frames(chunk)
                to_infer.put((slot, len(chunk)))
            to_infer.put(None)

        def infer():
            while (item := to_infer.get()) is not None:
                backend.submit(*item)
                to_post.put(item[0])
            to_post.put(None)

        def postprocess():
            while (slot := to_post.get()) is not None:
                scores.extend(float(s) for s in backend.wait(slot).score)
                backend.release(slot)

        threads = [threading.Thread(target=f) for f in (preprocess, infer, postprocess)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        np.testing.assert_allclose(scores, [lv / 255 / THRESHOLD for lv in levels], rtol=1e-6)

    def test_wait_gives_views_valid_until_release(self):
        """wait() returns the slot's first n rows without copying."""
        backend, executor = make_backend(slots=2, max_batch=4)
        slot = backend.acquire()
        slot.input[:2] = frames([10, 20])
        backend.submit(slot, 2)
        out = backend.wait(slot)
        assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 1, H, W)
        assert np.shares_memory(out.mask, executor.outputs[0]["mask"])
        backend.release(slot)

    def test_half_outputs_come_back_as_float32(self):
        """Float16 engine outputs are converted to the float32 ModelOutputs promise."""
        backend, _ = make_backend(out_dtype=np.float16)
        out = backend.infer(frames([100]))
        assert out.score.dtype == np.float32 and out.anomaly_map.dtype == np.float32

    @pytest.mark.parametrize("n", [0, 3])
    def test_batch_outside_limits_is_refused(self, n):
        """A batch of 0 or above max_batch is a caller bug."""
        backend, _ = make_backend(max_batch=2)
        slot = backend.acquire()
        with pytest.raises(ValueError, match=r"expected 1\.\.2"):
            backend.submit(slot, n)
        backend.release(slot)

    def test_failed_submit_is_drained_on_release(self):
        """When submit fails, release() synchronises the slot before freeing it (copies may be queued)."""
        backend, executor = make_backend()
        executor.fail_next = BackendError("execute_async_v3 failed")
        slot = backend.acquire()
        with pytest.raises(BackendError, match="execute_async_v3"):
            backend.submit(slot, 1)
        backend.release(slot)
        assert executor.calls[-1] == ("synchronize", slot.index)
        assert backend.ring.states[slot.index] == FREE
        assert backend.infer(frames([30])).score.shape == (1,)  # the backend goes on working

    def test_device_lost_is_sticky(self):
        """After a lost context every later call fails fast with DeviceLostError; `fatal` tells the daemon."""
        backend, executor = make_backend()
        executor.fail_next = DeviceLostError("illegal memory access")
        slot = backend.acquire()
        with pytest.raises(DeviceLostError):
            backend.submit(slot, 1)
        assert isinstance(backend.fatal, DeviceLostError)
        backend.release(slot)
        with pytest.raises(DeviceLostError):
            backend.acquire()

    def test_wait_failure_still_lets_the_slot_go(self):
        """If waiting fails, the slot is done and can be released (its frames get error verdicts)."""
        backend, executor = make_backend()
        slot = backend.acquire()
        backend.submit(slot, 1)
        executor.fail_sync = BackendError("cuEventSynchronize failed")
        with pytest.raises(BackendError):
            backend.wait(slot)
        assert backend.ring.states[slot.index] == DONE
        backend.release(slot)

    def test_close_drains_in_flight_work_then_frees(self):
        """close() waits for in-flight slots, closes the executor once, and refuses later use."""
        backend, executor = make_backend()
        slot = backend.acquire()
        backend.submit(slot, 1)
        backend.close()
        backend.close()
        assert executor.closed and ("synchronize", slot.index) in executor.calls
        with pytest.raises(BackendError, match="closed"):
            backend.acquire()


class TestTeardown:
    """close() frees only what no stage still writes into, and never raises (issue #12 item 7)."""

    def test_close_waits_for_a_slot_being_filled(self):
        """A slot the preprocess stage is still writing into is not freed under it: close waits for its release."""
        backend, executor = make_backend()
        slot = backend.acquire()
        closer = threading.Thread(target=backend.close)
        closer.start()
        closer.join(0.2)
        assert closer.is_alive() and not executor.closed, "pinned memory freed while a stage was writing into it"
        backend.release(slot)
        closer.join(5)
        assert executor.closed and executor.freed

    def test_close_gives_up_freeing_when_a_slot_stays_filled(self):
        """If the writer never finishes (a hung stage), close returns without freeing anything."""
        backend, executor = make_backend()
        backend.acquire()
        backend.close(timeout=0.05)
        assert not executor.closed

    def test_close_never_raises(self):
        """A failing executor close is logged; the daemon's shutdown goes on."""
        backend, executor = make_backend()

        def broken(free=True):
            msg = "cuGraphExecDestroy failed: an illegal memory access was encountered"
            raise RuntimeError(msg)

        executor.close = broken  # type: ignore[method-assign]
        backend.close()


class TestRunBatch:
    """Which batch TensorRT runs for a submission of n images."""

    @pytest.mark.parametrize(
        ("n", "rows", "min_batch", "fixed", "expected"),
        [
            (1, 4, 1, True, 4),  # CUDA graphs: padded to the captured size
            (3, 4, 1, True, 4),
            (3, 4, 1, False, 3),  # plain enqueue on a dynamic engine: the batch itself
            (1, 4, 4, True, 4),  # engine built for batch 4 only
            (1, 2, 2, False, 2),  # profile minimum above the batch
        ],
    )
    def test_batches(self, n, rows, min_batch, fixed, expected):
        """Padded to rows when fixed, else at least the profile's minimum."""
        assert run_batch(n, rows=rows, min_batch=min_batch, fixed=fixed) == expected


# CUDA error handling -----------------------------------------------------------------------------------------------
class TestCudaErrors:
    """CUDA failures become BackendError, sticky ones DeviceLostError."""

    @pytest.mark.parametrize(
        ("message", "fatal"),
        [
            ("cuEventSynchronize failed: an illegal memory access was encountered", True),
            ("cuStreamSynchronize failed: unspecified launch failure", True),
            ("cuMemcpyDtoHAsync failed: misaligned address", True),
            ("cuMemAlloc failed: out of memory", False),  # recoverable: free memory and retry
            ("cuStreamEndCapture failed: operation failed due to a previous error during capture", False),
        ],
    )
    def test_sticky_errors_are_recognised(self, message, fatal):
        """Messages of sticky errors (the context is lost) are told apart from recoverable ones."""
        assert cm.is_fatal(message) is fatal

    def test_check_turns_failures_into_backend_errors(self):
        """A failing call becomes BackendError naming the call, a sticky one DeviceLostError."""

        def fails(text, code=None):
            exc = RuntimeError(text)
            exc.code = code  # type: ignore[attr-defined]
            raise exc

        with pytest.raises(BackendError, match=r"CUDA cuMemAlloc: RuntimeError: out of memory") as info:
            cm.check("cuMemAlloc", fails, "out of memory")
        assert not isinstance(info.value, DeviceLostError)
        with pytest.raises(DeviceLostError, match="context is lost"):
            cm.check("cuGraphLaunch", fails, "CUDA error 719", 719)
        with pytest.raises(DeviceLostError, match="context is lost"):  # pycuda's text for CUDA_ERROR_ASSERT
            cm.check("cuEventSynchronize", fails, "cuEventSynchronize failed: device-side assert triggered")
        assert cm.check("noop", lambda x: x + 1, 1) == 2


# the real thing ----------------------------------------------------------------------------------------------------
def _gpu_ready() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    try:
        cm.load_layer(cm.DEFAULT_LAYER).device_info(0)
    except BackendError as exc:
        return str(exc)
    return None


class TestWithoutTensorRT:
    """Selecting TensorRT on a box without it."""

    @pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
    def test_load_explains_tensorrt_is_missing(self, engine_bundle):
        """On a box without TensorRT, selecting it fails with a clear BackendError, not an ImportError."""
        with pytest.raises(BackendError, match="TensorRT is not available"):
            load_backend(engine_bundle, ModelConfig(backend="tensorrt"))


@pytest.mark.gpu
class TestOnGpu:
    """The real engine and CUDA pipeline (needs TensorRT, cuda-python and a GPU)."""

    def test_engine_matches_onnxruntime(self, tmp_path):
        """Build an FP32 engine from the tiny bundle, run it through the ring on the GPU, compare with ONNX Runtime."""
        reason = _gpu_ready()
        if reason:
            pytest.skip(reason)
        from export.engine import build_engine

        make_tiny_bundle(tmp_path, height=H, width=W, threshold=THRESHOLD)
        build_engine(tmp_path, precision="fp32", max_batch=4, opt_batch=2, timing_cache=tmp_path / "timing.cache")
        from edge.bundle import load_bundle

        bundle = load_bundle(tmp_path)
        images = frames(range(0, 250, 10))
        trt_backend = load_backend(bundle, ModelConfig(backend="tensorrt", max_batch=4, slots=3))
        ort_backend = load_backend(bundle, ModelConfig(backend="onnxruntime", max_batch=4))
        try:
            for _ in range(3):  # plain, capture, replay
                got, want = trt_backend.infer(images), ort_backend.infer(images)
                np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-5)
                np.testing.assert_array_equal(got.mask, want.mask)
        finally:
            trt_backend.close()
            ort_backend.close()
