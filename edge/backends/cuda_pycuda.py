"""The pycuda layer (`model.cuda = "pycuda"`): pycuda for memory, streams and events, ctypes for the rest.

pycuda does not wrap primary-context flags or stream capture, so those few driver calls go straight to `libcuda`
through ctypes; every call, from either side, goes through `cuda_mem.check`. The primary context is retained
(shared with TensorRT, which uses the runtime API) instead of `pycuda.autoinit`, and pushed onto the calling thread
only around CUDA work, because the pipeline's stages call the backend from different threads. pycuda has no wheels:
it compiles against the CUDA toolkit (`pycuda>=2025.1.2`, the first release that works with CUDA 13's
`cuCtxCreate`); it is imported when the layer is created, never at module import.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edge.backends import cuda_mem as cm
from edge.errors import BackendError

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_SCHED_BLOCKING_SYNC = 0x04  # CU_CTX_SCHED_BLOCKING_SYNC
_STREAM_NON_BLOCKING = 0x1  # CU_STREAM_NON_BLOCKING (pycuda.driver.Stream(flags) takes the raw value)
_CAPTURE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, as trtexec captures


class _DriverError(Exception):
    def __init__(self, call: str, code: int, text: str) -> None:
        super().__init__(f"{call} failed: CUDA error {code} ({text})")
        self.code = code


_libcuda: Any = None


def _driver() -> Any:
    """libcuda, loaded once; BackendError when there is no NVIDIA driver on this box."""
    global _libcuda
    if _libcuda is None:
        name = ctypes.util.find_library("cuda") or "libcuda.so.1"
        try:
            _libcuda = ctypes.CDLL(name)
        except OSError as exc:
            msg = f"no NVIDIA driver: cannot load {name} ({exc})"
            raise BackendError(msg) from None
    return _libcuda


def _cu(name: str, *args: Any) -> None:
    """Call driver function `name`; raise _DriverError with CUDA's own error text on a non-zero CUresult."""
    lib = _driver()
    code = int(getattr(lib, name)(*args))
    if code != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(code, ctypes.byref(text))
        raise _DriverError(name, code, (text.value or b"?").decode())


def _import_pycuda() -> Any:
    return cm.import_library("pycuda.driver", "pycuda", "it compiles against the CUDA toolkit (pip install "
                             "'inspectd[pycuda]' with nvcc on PATH), or use the default model.cuda = \"cuda-python\"")


class Layer:
    """pycuda behind the CudaLayer seam."""

    name = "pycuda"

    def __init__(self) -> None:
        self.cuda = _import_pycuda()

    def version(self) -> str:
        """'pycuda 2025.1.2 (built for CUDA 12.6)'."""
        import pycuda  # type: ignore[import-not-found,unused-ignore]

        built = ".".join(str(v) for v in self.cuda.get_version()[:2])
        return f"pycuda {pycuda.VERSION_TEXT} (built for CUDA {built})"

    def device_info(self, index: int = 0) -> cm.DeviceInfo:
        """Facts about GPU `index` straight from the driver, without creating a context."""
        cm.check("cuInit", _cu, "cuInit", 0)
        count, version = ctypes.c_int(), ctypes.c_int()
        cm.check("cuDeviceGetCount", _cu, "cuDeviceGetCount", ctypes.byref(count))
        if index >= count.value:
            msg = f"no CUDA device {index}: the driver sees {count.value} device(s)"
            raise BackendError(msg)
        dev, major, minor, total = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
        name = ctypes.create_string_buffer(256)
        cm.check("cuDeviceGet", _cu, "cuDeviceGet", ctypes.byref(dev), index)
        cm.check("cuDeviceGetName", _cu, "cuDeviceGetName", name, 256, dev)
        cm.check("cuDeviceGetAttribute", _cu, "cuDeviceGetAttribute", ctypes.byref(major), _CC_MAJOR, dev)
        cm.check("cuDeviceGetAttribute", _cu, "cuDeviceGetAttribute", ctypes.byref(minor), _CC_MINOR, dev)
        cm.check("cuDeviceTotalMem", _cu, "cuDeviceTotalMem_v2", ctypes.byref(total), dev)
        cm.check("cuDriverGetVersion", _cu, "cuDriverGetVersion", ctypes.byref(version))
        v = version.value
        return cm.DeviceInfo(index, name.value.decode(), f"{major.value}.{minor.value}", total.value,
                             f"{v // 1000}.{(v % 1000) // 10}")

    def context(self, index: int = 0) -> PrimaryContext:
        """The primary context with blocking-sync scheduling, retained."""
        return PrimaryContext(self.cuda, index)

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> PinnedBuffer:
        """Page-locked host memory."""
        return PinnedBuffer(self.cuda, shape, dtype)

    def device(self, nbytes: int) -> DeviceBuffer:
        """Device memory."""
        return DeviceBuffer(self.cuda, nbytes)

    def stream(self) -> StreamEvent:
        """A non-blocking stream and its blocking-sync event."""
        return StreamEvent(self.cuda)

    def capture(self, stream: cm.Stream, enqueue: Callable[[], None]) -> CudaGraph:
        """Capture and instantiate `enqueue()` on `stream` (driver API)."""
        return CudaGraph(stream, enqueue)

    def clear_error(self) -> None:
        """The driver API keeps no last-error state: cuStreamEndCapture already ended the failed capture."""


class PrimaryContext:
    """The device's primary context, retained once and pushed around each piece of CUDA work."""

    def __init__(self, cuda: Any, index: int) -> None:
        self.cuda = cuda
        cm.check("cuInit", cuda.init)
        self.device = cm.check("cuDeviceGet", cuda.Device, index)
        dev = ctypes.c_int()
        cm.check("cuDeviceGet", _cu, "cuDeviceGet", ctypes.byref(dev), index)
        # before the retain: a wait then sleeps instead of spinning a core (the default with few contexts)
        cm.check("cuDevicePrimaryCtxSetFlags", _cu, "cuDevicePrimaryCtxSetFlags_v2", dev, _SCHED_BLOCKING_SYNC)
        self._ctx: Any = cm.check("cuDevicePrimaryCtxRetain", self.device.retain_primary_context)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Push the context on this thread for the block (TensorRT and pycuda calls inside use it)."""
        if self._ctx is None:
            msg = "CUDA context already released (backend closed)"
            raise BackendError(msg)
        cm.check("cuCtxPushCurrent", self._ctx.push)
        try:
            yield
        finally:
            cm.check("cuCtxPopCurrent", self.cuda.Context.pop)

    def close(self) -> None:
        """Release the primary context (last step of teardown: every buffer and stream is gone by now)."""
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            cm.check("cuDevicePrimaryCtxRelease", ctx.detach)


class PinnedBuffer:
    """pycuda page-locked memory as a numpy array."""

    def __init__(self, cuda: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.array: np.ndarray = cm.check("cuMemHostAlloc", cuda.pagelocked_empty, shape, dtype)

    def close(self) -> None:
        """Free the page-locked allocation (the array must not be used afterwards)."""
        allocation: Any = self.array.base  # pycuda's HostAllocation behind the array
        if allocation is not None:
            cm.check("cuMemFreeHost", allocation.free)


class DeviceBuffer:
    """Device memory of `nbytes`."""

    def __init__(self, cuda: Any, nbytes: int) -> None:
        self._alloc: Any = cm.check("cuMemAlloc", cuda.mem_alloc, max(1, nbytes))
        self.ptr = int(self._alloc)
        self.nbytes = nbytes

    def close(self) -> None:
        """Free the device allocation; a second call does nothing."""
        if self._alloc is not None:
            alloc, self._alloc = self._alloc, None
            cm.check("cuMemFree", alloc.free)


class StreamEvent:
    """A non-blocking stream and a BLOCKING_SYNC | DISABLE_TIMING event (trtexec's defaults)."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.stream: Any = cm.check("cuStreamCreate", cuda.Stream, _STREAM_NON_BLOCKING)
        flags = cuda.event_flags.BLOCKING_SYNC | cuda.event_flags.DISABLE_TIMING
        self.event: Any = cm.check("cuEventCreate", cuda.Event, flags)

    @property
    def handle(self) -> int:
        """The CUstream handle."""
        return int(self.stream.handle)

    def htod(self, device: cm.DeviceBuffer, host: np.ndarray) -> None:
        """Async copy host -> device."""
        cm.check("cuMemcpyHtoDAsync", self.cuda.memcpy_htod_async, device.ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, device: cm.DeviceBuffer) -> None:
        """Async copy device -> host."""
        cm.check("cuMemcpyDtoHAsync", self.cuda.memcpy_dtoh_async, host, device.ptr, self.stream)

    def record(self) -> None:
        """Record the event after everything enqueued so far."""
        cm.check("cuEventRecord", self.event.record, self.stream)

    def wait_event(self) -> None:
        """Block on the event (cuEventSynchronize; pycuda releases the GIL while it blocks)."""
        cm.check("cuEventSynchronize", self.event.synchronize)

    def fired(self) -> bool:
        """Query the event (cuEventQuery)."""
        return bool(cm.check("cuEventQuery", self.event.query))

    def drain(self) -> None:
        """Block on the stream (cuStreamSynchronize)."""
        cm.check("cuStreamSynchronize", self.stream.synchronize)

    def close(self) -> None:
        """Drop the event and stream (pycuda destroys both when the last reference goes)."""
        self.event = None
        self.stream = None


class CudaGraph:
    """Copy + enqueue captured once on a stream and replayed with one launch (driver API, as trtexec does)."""

    def __init__(self, stream: cm.Stream, enqueue: Callable[[], None]) -> None:
        self._graph, self._exec = ctypes.c_void_p(), ctypes.c_void_p()
        handle = ctypes.c_void_p(stream.handle)
        cm.check("cuStreamBeginCapture", _cu, "cuStreamBeginCapture_v2", handle, _CAPTURE_THREAD_LOCAL)
        try:
            try:
                enqueue()
            finally:  # always end the capture, or the stream stays in capture mode and unusable
                cm.check("cuStreamEndCapture", _cu, "cuStreamEndCapture", handle, ctypes.byref(self._graph))
            cm.check("cuGraphInstantiate", _cu, "cuGraphInstantiateWithFlags", ctypes.byref(self._exec),
                     self._graph, ctypes.c_ulonglong(0))
        except BaseException:
            with contextlib.suppress(BackendError):
                self.close()
            raise

    def launch(self, stream: cm.Stream) -> None:
        """Enqueue one replay of the captured work on `stream`."""
        cm.check("cuGraphLaunch", _cu, "cuGraphLaunch", self._exec, ctypes.c_void_p(stream.handle))

    def close(self) -> None:
        """Destroy the executable graph, then the graph; a second call does nothing."""
        exec_, self._exec = self._exec, ctypes.c_void_p()
        graph, self._graph = self._graph, ctypes.c_void_p()
        try:
            if exec_.value:
                cm.check("cuGraphExecDestroy", _cu, "cuGraphExecDestroy", exec_)
        finally:
            if graph.value:
                cm.check("cuGraphDestroy", _cu, "cuGraphDestroy", graph)
