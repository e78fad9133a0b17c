"""The cuda-python layer (default): NVIDIA's `cuda.bindings` runtime API, as TensorRT's own samples use it.

In execution order, like `samples/python/common_runtime.py`: one call checker, context, memory, stream + event,
graph. Every runtime call returns `(err, *values)`; `_call` turns a non-zero `err` into the seam's errors with CUDA's
own name and text. The runtime API works on the device's primary context, which TensorRT shares; the calls release
the GIL, so a stage blocked on an event does not stop the others. `cuda.bindings` is imported when the layer is
created, never at module import (the old `from cuda import cudart` is gone in cuda-bindings 13).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge.backends import cuda_mem as cm
from edge.errors import BackendError


def _import_runtime() -> Any:
    return cm.import_library("cuda.bindings.runtime", "cuda-python", "pip install 'inspectd[gpu]' (on JetPack 6 / "
                             "CUDA 12: pip install 'cuda-python>=12.6,<13'), or set model.cuda = \"pycuda\"")


class Layer:
    """cuda-python behind the CudaLayer seam; `rt` is the `cuda.bindings.runtime` module (tests pass a stand-in)."""

    name = "cuda-python"

    def __init__(self, rt: Any = None) -> None:
        self.rt = rt if rt is not None else _import_runtime()

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run runtime call `fn`; raise the seam's error for a non-zero cudaError_t, else return its value(s)."""
        err, *values = fn(*args)
        self.raise_for(what, err)
        return values[0] if len(values) == 1 else tuple(values) or None

    def raise_for(self, what: str, err: Any) -> None:
        """Raise the seam's error for a non-zero cudaError_t, with CUDA's name and text for it."""
        code = int(getattr(err, "value", err))
        if code:
            name = _text(self.rt.cudaGetErrorName(err))
            raise cm.cuda_error(what, code, f"{name} ({code}): {_text(self.rt.cudaGetErrorString(err))}")

    def destroy(self, *steps: tuple[str, Any]) -> None:
        """Call runtime function `name(handle)` for each step whose handle exists, all of them even if one fails.

        The first failure is raised after the rest ran.
        """
        failure: BaseException | None = None
        for name, handle in steps:
            if handle is None:
                continue
            try:
                self.call(name, getattr(self.rt, name), handle)
            except BackendError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def version(self) -> str:
        """'cuda-python 12.6.2 (CUDA runtime 12.6)'."""
        try:
            package = importlib.metadata.version("cuda-python")
        except importlib.metadata.PackageNotFoundError:
            package = "?"
        runtime = int(self.call("cudaRuntimeGetVersion", self.rt.cudaRuntimeGetVersion))
        return f"cuda-python {package} (CUDA runtime {runtime // 1000}.{(runtime % 1000) // 10})"

    def device_info(self, index: int = 0) -> cm.DeviceInfo:
        """Name, compute capability, memory and driver version of GPU `index`."""
        count = int(self.call("cudaGetDeviceCount", self.rt.cudaGetDeviceCount))
        if index >= count:
            msg = f"no CUDA device {index}: the driver sees {count} device(s)"
            raise BackendError(msg)
        prop = self.call("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties, index)
        driver = int(self.call("cudaDriverGetVersion", self.rt.cudaDriverGetVersion))
        name = bytes(prop.name).split(b"\0", 1)[0].decode(errors="replace")
        return cm.DeviceInfo(index, name, f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem),
                             f"{driver // 1000}.{(driver % 1000) // 10}")

    def context(self, index: int = 0) -> RuntimeContext:
        """Device `index`'s primary context, set to blocking-sync scheduling."""
        return RuntimeContext(self, index)

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> PinnedBuffer:
        """Page-locked host memory."""
        return PinnedBuffer(self, shape, np.dtype(dtype))

    def device(self, nbytes: int) -> DeviceBuffer:
        """Device memory."""
        return DeviceBuffer(self, nbytes)

    def stream(self) -> StreamEvent:
        """A non-blocking stream and its blocking-sync event."""
        return StreamEvent(self)

    def capture(self, stream: cm.Stream, enqueue: Callable[[], None]) -> CudaGraph:
        """Capture and instantiate `enqueue()` on `stream`."""
        return CudaGraph(self, stream, enqueue)

    def clear_error(self) -> None:
        """cudaGetLastError: reset the runtime's last error (a failed capture leaves one behind)."""
        self.rt.cudaGetLastError()


def _text(result: Any) -> str:
    """The bytes of a (err, bytes) pair from cudaGetErrorName / cudaGetErrorString."""
    value = result[1] if isinstance(result, tuple) else result
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class RuntimeContext:
    """The primary context through the runtime API: cudaSetDevice per thread, blocking-sync scheduling."""

    def __init__(self, layer: Layer, index: int) -> None:
        self.layer, self.index = layer, index
        self._threads = threading.local()
        self._open = True
        rt = layer.rt
        layer.call("cudaSetDevice", rt.cudaSetDevice, index)
        # Overwrites the flags of an already initialised device (CUDA >= 11): waits sleep instead of spinning.
        layer.call("cudaSetDeviceFlags", rt.cudaSetDeviceFlags, rt.cudaDeviceScheduleBlockingSync)
        layer.call("cudaFree(0)", rt.cudaFree, 0)  # create the primary context now, not on the first copy
        self._threads.ready = True

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Select the device on this thread once (the runtime then uses its primary context)."""
        if not self._open:
            msg = "CUDA context already released (backend closed)"
            raise BackendError(msg)
        if not getattr(self._threads, "ready", False):
            self.layer.call("cudaSetDevice", self.layer.rt.cudaSetDevice, self.index)
            self._threads.ready = True
        yield

    def close(self) -> None:
        """Nothing to release: the runtime owns the primary context for the life of the process."""
        self._open = False


class PinnedBuffer:
    """cudaHostAlloc'd memory viewed as a numpy array (a byte view, so float16 works too)."""

    def __init__(self, layer: Layer, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.layer = layer
        used = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.ptr: int | None = int(layer.call("cudaHostAlloc", layer.rt.cudaHostAlloc, max(1, used),
                                              layer.rt.cudaHostAllocDefault))
        raw = (ctypes.c_ubyte * max(1, used)).from_address(self.ptr)
        self.array: np.ndarray = np.frombuffer(memoryview(raw), np.uint8, count=used).view(dtype).reshape(shape)

    def close(self) -> None:
        """cudaFreeHost; a second call does nothing."""
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.layer.call("cudaFreeHost", self.layer.rt.cudaFreeHost, ptr)


class DeviceBuffer:
    """cudaMalloc'd memory."""

    def __init__(self, layer: Layer, nbytes: int) -> None:
        self.layer, self.nbytes = layer, nbytes
        self.ptr = int(layer.call("cudaMalloc", layer.rt.cudaMalloc, max(1, nbytes)))
        self._live = True

    def close(self) -> None:
        """cudaFree; a second call does nothing."""
        if self._live:
            self._live = False
            self.layer.call("cudaFree", self.layer.rt.cudaFree, self.ptr)


class StreamEvent:
    """cudaStreamNonBlocking stream + cudaEventBlockingSync | cudaEventDisableTiming event (trtexec's defaults)."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        rt = layer.rt
        self.stream: Any = layer.call("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags,
                                      rt.cudaStreamNonBlocking)
        self.event: Any = None
        try:
            self.event = layer.call("cudaEventCreateWithFlags", rt.cudaEventCreateWithFlags,
                                    rt.cudaEventBlockingSync | rt.cudaEventDisableTiming)
        except BaseException:
            self.close()
            raise

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int."""
        return int(self.stream)

    def htod(self, device: cm.DeviceBuffer, host: np.ndarray) -> None:
        """Async copy host -> device."""
        rt = self.layer.rt
        self.layer.call("cudaMemcpyAsync(HtoD)", rt.cudaMemcpyAsync, device.ptr, host.ctypes.data, host.nbytes,
                        rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream)

    def dtoh(self, host: np.ndarray, device: cm.DeviceBuffer) -> None:
        """Async copy device -> host."""
        rt = self.layer.rt
        self.layer.call("cudaMemcpyAsync(DtoH)", rt.cudaMemcpyAsync, host.ctypes.data, device.ptr, host.nbytes,
                        rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream)

    def record(self) -> None:
        """Record the event on the stream (cudaEventRecord)."""
        self.layer.call("cudaEventRecord", self.layer.rt.cudaEventRecord, self.event, self.stream)

    def wait_event(self) -> None:
        """cudaEventSynchronize: the thread sleeps (blocking-sync event) without the GIL."""
        self.layer.call("cudaEventSynchronize", self.layer.rt.cudaEventSynchronize, self.event)

    def fired(self) -> bool:
        """cudaEventQuery: cudaErrorNotReady means not yet."""
        rt = self.layer.rt
        (err,) = rt.cudaEventQuery(self.event)
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        self.layer.raise_for("cudaEventQuery", err)
        return True

    def drain(self) -> None:
        """Block on the stream (cudaStreamSynchronize)."""
        self.layer.call("cudaStreamSynchronize", self.layer.rt.cudaStreamSynchronize, self.stream)

    def close(self) -> None:
        """Destroy the event, then the stream; a second call does nothing."""
        event, self.event = self.event, None
        stream, self.stream = self.stream, None
        self.layer.destroy(("cudaEventDestroy", event), ("cudaStreamDestroy", stream))


class CudaGraph:
    """Stream capture (thread-local mode) -> cudaGraphInstantiate -> cudaGraphLaunch, as trtexec does."""

    def __init__(self, layer: Layer, stream: cm.Stream, enqueue: Callable[[], None]) -> None:
        self.layer = layer
        self._graph: Any = None
        self._exec: Any = None
        rt = layer.rt
        handle = stream.handle
        layer.call("cudaStreamBeginCapture", rt.cudaStreamBeginCapture, handle,
                   rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            try:
                enqueue()
            finally:  # always end the capture, or the stream stays in capture mode and unusable
                self._graph = layer.call("cudaStreamEndCapture", rt.cudaStreamEndCapture, handle)
            self._exec = layer.call("cudaGraphInstantiate", rt.cudaGraphInstantiate, self._graph, 0)
        except BaseException:
            layer.clear_error()
            with contextlib.suppress(BackendError):
                self.close()
            raise

    def launch(self, stream: cm.Stream) -> None:
        """Replay on `stream` (cudaGraphLaunch)."""
        self.layer.call("cudaGraphLaunch", self.layer.rt.cudaGraphLaunch, self._exec, stream.handle)

    def close(self) -> None:
        """Destroy the executable graph, then the graph; a second call does nothing."""
        exec_, self._exec = self._exec, None
        graph, self._graph = self._graph, None
        self.layer.destroy(("cudaGraphExecDestroy", exec_), ("cudaGraphDestroy", graph))
