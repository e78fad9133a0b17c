"""The CUDA layers and the TensorRT executor on the CPU.

The cuda-python layer runs for real against `FakeRuntime`: `cuda.bindings.runtime` with only the GPU calls replaced
(memory is real host memory, copies are real memmoves, a "stream" runs its work at once, a capture records it and a
graph launch replays it), while its constants, enums and error texts stay the real module's. `FakeContext` stands in
for a TensorRT execution context: it computes the tiny bundle's rule on the device buffers it was bound to and,
like TensorRT, refuses shapes outside the engine profile. So the executor's load-time warm-up and capture, padding,
error fallback and teardown run here exactly as they would over a GPU; only TensorRT's and CUDA's own behaviour
needs the device (tests/edge/backends/test_trt.py::TestOnGpu).
"""

from __future__ import annotations

import ctypes
import itertools
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edge.backends import cuda_mem as cm
from edge.backends.ring import RingBackend
from edge.backends.trt import TrtExecutor, plan_buffers
from edge.errors import BackendError, DeviceLostError
from tests.edge.backends.test_trt import FakeEngine, H, W, contract_engine, frames, reference

rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install cuda-python)")
cuda_rt = pytest.importorskip("edge.backends.cuda_rt")
OUTPUTS = ("score", "anomaly_map", "mask")


class FakeRuntime:
    """`cuda.bindings.runtime` with the GPU calls replaced; everything else is the real module's."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: dict[str, Any] = {}  # call name -> cudaError_t to return (once)
        self._memory: dict[int, Any] = {}  # ptr -> ctypes buffer (host and "device" alike)
        self._handles = itertools.count(0x100)
        self._capturing: dict[int, list[Any]] = {}
        self._graphs: dict[int, list[Any]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(rt, name)  # constants, enums, cudaGetErrorName/String

    def _result(self, name: str, args: tuple[Any, ...], *values: Any) -> tuple[Any, ...]:
        self.calls.append((name, args))
        err = self.fail.pop(name, None)
        if err is not None:
            return (err, *[None] * len(values))
        return (rt.cudaError_t.cudaSuccess, *values)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]

    def enqueue(self, stream: int, work: Any) -> None:
        """Run `work` now, or record it when `stream` is being captured."""
        if int(stream) in self._capturing:
            self._capturing[int(stream)].append(work)
        else:
            work()

    def _alloc(self, size: int) -> int:
        buf = (ctypes.c_ubyte * size)()
        self._memory[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    # device and context
    def cudaGetDeviceCount(self):
        return self._result("cudaGetDeviceCount", (), 1)

    def cudaGetDeviceProperties(self, index):
        prop = SimpleNamespace(name=b"Orin\0\0\0", major=8, minor=7, totalGlobalMem=8 << 30)
        return self._result("cudaGetDeviceProperties", (index,), prop)

    def cudaDriverGetVersion(self):
        return self._result("cudaDriverGetVersion", (), 12060)

    def cudaRuntimeGetVersion(self):
        return self._result("cudaRuntimeGetVersion", (), 12060)

    def cudaSetDevice(self, index):
        return self._result("cudaSetDevice", (index,))

    def cudaSetDeviceFlags(self, flags):
        return self._result("cudaSetDeviceFlags", (flags,))

    def cudaGetLastError(self):
        return self._result("cudaGetLastError", ())

    # memory
    def cudaHostAlloc(self, size, flags):
        return self._result("cudaHostAlloc", (size, flags), self._alloc(size))

    def cudaMalloc(self, size):
        return self._result("cudaMalloc", (size,), self._alloc(size))

    def cudaFreeHost(self, ptr):
        self._memory.pop(ptr, None)
        return self._result("cudaFreeHost", (ptr,))

    def cudaFree(self, ptr):
        if ptr:
            self._memory.pop(ptr, None)
        return self._result("cudaFree", (ptr,))

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, count))
        return self._result("cudaMemcpyAsync", (dst, src, count, kind, stream))

    # streams, events
    def cudaStreamCreateWithFlags(self, flags):
        return self._result("cudaStreamCreateWithFlags", (flags,), next(self._handles))

    def cudaEventCreateWithFlags(self, flags):
        return self._result("cudaEventCreateWithFlags", (flags,), next(self._handles))

    def cudaStreamDestroy(self, stream):
        return self._result("cudaStreamDestroy", (stream,))

    def cudaEventDestroy(self, event):
        return self._result("cudaEventDestroy", (event,))

    def cudaEventRecord(self, event, stream):
        return self._result("cudaEventRecord", (event, stream))

    def cudaEventSynchronize(self, event):
        return self._result("cudaEventSynchronize", (event,))

    def cudaEventQuery(self, event):
        return self._result("cudaEventQuery", (event,))

    def cudaStreamSynchronize(self, stream):
        return self._result("cudaStreamSynchronize", (stream,))

    # graphs
    def cudaStreamBeginCapture(self, stream, mode):
        self._capturing[int(stream)] = []
        return self._result("cudaStreamBeginCapture", (stream, mode))

    def cudaStreamEndCapture(self, stream):
        work = self._capturing.pop(int(stream))
        graph = next(self._handles)
        self._graphs[graph] = work
        return self._result("cudaStreamEndCapture", (stream,), graph)

    def cudaGraphInstantiate(self, graph, flags):
        exec_ = next(self._handles)
        self._graphs[exec_] = self._graphs[graph]
        return self._result("cudaGraphInstantiate", (graph, flags), exec_)

    def cudaGraphLaunch(self, exec_, stream):
        for work in self._graphs[exec_]:
            self.enqueue(stream, work)
        return self._result("cudaGraphLaunch", (exec_, stream))

    def cudaGraphExecDestroy(self, exec_):
        return self._result("cudaGraphExecDestroy", (exec_,))

    def cudaGraphDestroy(self, graph):
        return self._result("cudaGraphDestroy", (graph,))


def device_array(ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_ubyte * count).from_address(ptr), np.uint8).view(dtype).reshape(shape)


class FakeContext:
    """A TensorRT execution context: computes the tiny bundle's rule on its bound device buffers, on its stream."""

    def __init__(self, runtime: FakeRuntime, profile: tuple[int, int]) -> None:
        self.runtime, self.profile = runtime, profile
        self.addresses: dict[str, int] = {}
        self.batch = 0
        self.calls: list[tuple[str, int]] = []

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.calls.append(("set_input_shape", shape[0]))
        if not self.profile[0] <= shape[0] <= self.profile[1]:
            return False  # TensorRT refuses a shape outside the optimisation profile
        self.batch = shape[0]
        return True

    def execute_async_v3(self, stream):
        n = self.batch
        self.calls.append(("execute", n))

        def run():
            images = device_array(self.addresses["image"], np.uint8, (n, H, W, 3))
            for name, value in zip(OUTPUTS, reference(images), strict=True):
                device_array(self.addresses[name], value.dtype, value.shape)[...] = value

        self.runtime.enqueue(stream, run)
        return True


class FakeTrtEngine(FakeEngine):
    """contract_engine() that creates FakeContexts."""

    def __init__(self, runtime: FakeRuntime, batches: tuple[int, int] = (1, 4)) -> None:
        base = contract_engine(max_batch=batches[1])
        lo, hi = batches
        if lo == hi:  # an engine built for one batch: static shapes
            base.tensors = {k: (m, d, (hi, *s[1:])) for k, (m, d, s) in base.tensors.items()}
        base.profile["image"] = tuple((b, H, W, 3) for b in (lo, lo, hi))
        super().__init__(base.tensors, base.profile)
        self.runtime, self.batches = runtime, batches
        self.contexts: list[FakeContext] = []

    def create_execution_context(self):
        self.contexts.append(FakeContext(self.runtime, self.batches))
        return self.contexts[-1]


def make_executor(runtime: FakeRuntime, *, max_batch=4, batches=(1, 4), slots=2, cuda_graphs=True):
    layer = cuda_rt.Layer(runtime)
    engine = FakeTrtEngine(runtime, batches)
    rows = max(max_batch, batches[0])
    logger = SimpleNamespace(last_error="")
    executor = TrtExecutor(layer, layer.context(0), None, engine, logger, plan_buffers(engine, rows), slots=slots,
                           cuda_graphs=cuda_graphs, min_batch=batches[0])
    return executor, engine


class TestFlags:
    """What the layer asks CUDA for (issue #12 items 6 and 11)."""

    def test_blocking_sync_events_and_scheduling_non_blocking_streams(self):
        """Waits sleep instead of spinning a core; streams never serialise with the legacy default stream."""
        runtime = FakeRuntime()
        make_executor(runtime, slots=3)
        assert runtime.args("cudaSetDeviceFlags") == [(rt.cudaDeviceScheduleBlockingSync,)]
        assert runtime.args("cudaStreamCreateWithFlags") == [(rt.cudaStreamNonBlocking,)] * 3
        assert runtime.args("cudaEventCreateWithFlags") == [(rt.cudaEventBlockingSync | rt.cudaEventDisableTiming,)] * 3
        modes = [mode for _, mode in runtime.args("cudaStreamBeginCapture")]
        assert modes == [rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal] * 3


class TestGraphsAtLoad:
    """CUDA graphs are captured at load for every slot; the hot path only replays them (item 8)."""

    def test_every_slot_is_warmed_up_then_captured_at_load(self):
        """Per slot: one plain run at the padded batch, a drain, then the capture; nothing is left for later."""
        runtime = FakeRuntime()
        executor, engine = make_executor(runtime, slots=3)
        assert all(s.graph is not None for s in executor.slots)
        assert [c.calls for c in engine.contexts] == [[("set_input_shape", 4), ("execute", 4), ("execute", 4)]] * 3
        names = runtime.names()
        first_capture = names.index("cudaStreamBeginCapture")
        assert names.index("cudaStreamSynchronize") < first_capture  # the plain run finished before capturing

    @pytest.mark.parametrize("n", [1, 2, 3, 4])
    def test_partial_batches_replay_the_graph_padded(self, n):
        """Any batch size replays the slot's graph, no shape change or capture on the hot path; rows past n pad."""
        runtime = FakeRuntime()
        executor, engine = make_executor(runtime)
        backend = RingBackend(executor, name="fake-trt", max_batch=4, input_shape=(H, W, 3), slots=2)
        before = [list(c.calls) for c in engine.contexts]
        runtime.calls.clear()
        images = frames(range(0, 250, 10))
        out = backend.infer(images)  # 26 images: batches of 4 and a last one of 2
        want = reference(images)
        np.testing.assert_allclose(out.anomaly_map, want[1], rtol=1e-6)
        np.testing.assert_array_equal(out.mask, want[2])
        assert [c.calls for c in engine.contexts] == before  # no set_input_shape, no plain execute
        assert "cudaStreamBeginCapture" not in runtime.names()
        assert runtime.names().count("cudaGraphLaunch") == 7
        slot = backend.acquire()
        slot.input[:n] = frames([200] * n)
        backend.submit(slot, n)
        np.testing.assert_allclose(backend.wait(slot).score, reference(frames([200] * n))[0], rtol=1e-6)
        backend.release(slot)


class TestCaptureFailure:
    """A failed capture clears CUDA's error state and leaves that slot on plain enqueue (item 11)."""

    def test_failed_capture_clears_the_error_and_falls_back(self):
        """The error state is cleared right after the failed capture; the slot still gives right results, plainly."""
        runtime = FakeRuntime()
        runtime.fail["cudaStreamEndCapture"] = rt.cudaError_t.cudaErrorStreamCaptureInvalidated
        executor, engine = make_executor(runtime)
        names = runtime.names()
        end = names.index("cudaStreamEndCapture")
        assert names[end + 1] == "cudaGetLastError"
        assert executor.slots[0].graph is None and executor.slots[1].graph is not None
        backend = RingBackend(executor, name="fake-trt", max_batch=4, input_shape=(H, W, 3), slots=2)
        out = backend.infer(frames([30, 60, 90]))
        np.testing.assert_allclose(out.score, reference(frames([30, 60, 90]))[0], rtol=1e-6)
        assert engine.contexts[0].calls[-1] == ("execute", 4)  # plain, still at the padded batch

    def test_device_lost_during_warm_up_fails_the_load(self):
        """A sticky error at load is not a capture failure to fall back from: the load fails."""
        runtime = FakeRuntime()
        runtime.fail["cudaStreamSynchronize"] = rt.cudaError_t.cudaErrorIllegalAddress
        with pytest.raises(DeviceLostError, match="cudaErrorIllegalAddress"):
            make_executor(runtime)
        assert "cudaFreeHost" in runtime.names()  # what was allocated is freed again


class TestFixedBatchEngine:
    """An engine built for one batch size (item 12)."""

    def test_partial_batches_are_padded_to_the_engine_batch(self):
        """A static batch-4 engine, max_batch 1, no graphs: every run is at 4, never a shape the engine refuses."""
        runtime = FakeRuntime()
        executor, engine = make_executor(runtime, max_batch=1, batches=(4, 4), cuda_graphs=False)
        backend = RingBackend(executor, name="fake-trt", max_batch=1, input_shape=(H, W, 3), slots=2)
        out = backend.infer(frames([10, 100, 250]))
        np.testing.assert_allclose(out.score, reference(frames([10, 100, 250]))[0], rtol=1e-6)
        assert {c for ctx in engine.contexts for c in ctx.calls} == {("set_input_shape", 4), ("execute", 4)}

    def test_dynamic_engine_without_graphs_runs_each_batch_size(self):
        """Without graphs a dynamic engine runs the batch itself (no padding work)."""
        runtime = FakeRuntime()
        executor, engine = make_executor(runtime, cuda_graphs=False)
        backend = RingBackend(executor, name="fake-trt", max_batch=4, input_shape=(H, W, 3), slots=2)
        backend.infer(frames(range(6)))
        assert [c for ctx in engine.contexts for c in ctx.calls if c[0] == "execute"] == [("execute", 4),
                                                                                         ("execute", 2)]


class TestErrorsAndTeardown:
    """Error mapping (item 9) and a teardown that never raises and never frees after a device loss (item 7)."""

    def test_real_error_texts_are_recognised_as_fatal(self):
        """Every sticky code's text, as CUDA itself spells it, is recognised (pycuda builds messages from them)."""
        for code in cm.FATAL_CODES:
            _, text = rt.cudaGetErrorString(rt.cudaError_t(code))
            assert cm.is_fatal(text.decode()), (code, text)
        assert 710 in cm.FATAL_CODES and cm.is_fatal("device-side assert triggered")
        _, oom = rt.cudaGetErrorString(rt.cudaError_t.cudaErrorMemoryAllocation)
        assert not cm.is_fatal(oom.decode())

    def test_device_side_assert_is_a_device_loss(self):
        """A device-side assert (710) on the event wait becomes DeviceLostError and the backend's `fatal`."""
        runtime = FakeRuntime()
        executor, _ = make_executor(runtime)
        backend = RingBackend(executor, name="fake-trt", max_batch=4, input_shape=(H, W, 3), slots=2)
        slot = backend.acquire()
        backend.submit(slot, 1)
        runtime.fail["cudaEventSynchronize"] = rt.cudaError_t.cudaErrorAssert
        with pytest.raises(DeviceLostError, match=r"cudaErrorAssert \(710\): device-side assert triggered"):
            backend.wait(slot)
        assert isinstance(backend.fatal, DeviceLostError)
        backend.release(slot)
        runtime.calls.clear()
        backend.close()
        assert runtime.names() == []  # nothing freed on a lost context

    def test_a_failed_free_does_not_stop_the_others(self):
        """One failing cudaFree is logged; every other buffer, stream and graph is still released."""
        runtime = FakeRuntime()
        executor, _ = make_executor(runtime)
        runtime.calls.clear()
        runtime.fail["cudaFree"] = rt.cudaError_t.cudaErrorInvalidValue
        executor.close()
        names = runtime.names()
        assert names.count("cudaFree") == 8 and names.count("cudaFreeHost") == 8  # 2 slots x 4 tensors
        assert names.count("cudaGraphExecDestroy") == 2 and names.count("cudaStreamDestroy") == 2


class TestLayer:
    """The cuda-python layer's own facts."""

    def test_version_and_device_info(self):
        """What `inspectd check` reports: the package, the runtime version and the GPU."""
        layer = cuda_rt.Layer(FakeRuntime())
        assert layer.version().startswith("cuda-python ") and layer.version().endswith("(CUDA runtime 12.6)")
        assert layer.device_info(0) == cm.DeviceInfo(0, "Orin", "8.7", 8 << 30, "12.6")
        with pytest.raises(BackendError, match="no CUDA device 1"):
            layer.device_info(1)

    def test_real_library_without_a_gpu_says_why(self):
        """The real cuda.bindings runtime on a box without a driver: a BackendError naming CUDA's error."""
        layer = cm.load_layer("cuda-python")
        try:
            info = layer.device_info(0)
        except BackendError as exc:
            assert "cudaGetDeviceCount" in str(exc) and "cudaError" in str(exc)
        else:  # a GPU box
            assert info.name

    def test_unknown_layer_is_refused(self):
        """model.cuda names one of the two layers."""
        with pytest.raises(BackendError, match="expected one of"):
            cm.load_layer("cupy")


class TestPycudaLayer:
    """The pycuda layer's flags, on a stand-in module (pycuda compiles against the CUDA toolkit)."""

    def test_non_blocking_stream_and_blocking_sync_event(self):
        """Stream(CU_STREAM_NON_BLOCKING), Event(BLOCKING_SYNC | DISABLE_TIMING)."""
        from edge.backends import cuda_pycuda

        made: dict[str, Any] = {}
        fake = SimpleNamespace(
            Stream=lambda flags=0: made.setdefault("stream", flags),
            Event=lambda flags=0: made.setdefault("event", flags),
            event_flags=SimpleNamespace(DEFAULT=0, BLOCKING_SYNC=1, DISABLE_TIMING=2),
        )
        cuda_pycuda.StreamEvent(fake)
        assert made == {"stream": 1, "event": 1 | 2}

