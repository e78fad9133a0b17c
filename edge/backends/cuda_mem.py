"""The CUDA side of the TensorRT backend, in execution order: error check, context, memory, stream, event, graph.

pycuda owns memory, streams and events (what the product card asks for); the few driver calls pycuda does not
wrap on every version (device facts without a context, CUDA-graph capture) go straight to `libcuda` through
ctypes. Every call, from either side, goes through `_check`, which turns a failure into `BackendError` or, for a
sticky error that poisons the context (illegal address, launch failure, ECC), into `DeviceLostError`: after one of
those no CUDA call in this process can succeed again, so the daemon must exit and let systemd restart it.

The primary context is retained (shared with TensorRT, which uses the runtime API) instead of `pycuda.autoinit`,
and pushed onto the calling thread only around CUDA work (`CudaContext.current()`), because the pipeline's
stages call the backend from different threads. `pycuda` is imported on first use, never at module import.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from edge.errors import BackendError, DeviceLostError

T = TypeVar("T")

# CUresult codes after which the context is unusable (CUDA driver API, "sticky" errors).
FATAL_CODES = {214: "ECC_UNCORRECTABLE", 700: "ILLEGAL_ADDRESS", 702: "LAUNCH_TIMEOUT", 714: "HARDWARE_STACK_ERROR",
               715: "ILLEGAL_INSTRUCTION", 716: "MISALIGNED_ADDRESS", 717: "INVALID_ADDRESS_SPACE", 718: "INVALID_PC",
               719: "LAUNCH_FAILED", 999: "UNKNOWN"}
# The same errors as pycuda and TensorRT spell them in messages (cuGetErrorString texts).
FATAL_TEXTS = ("illegal memory access", "illegal address", "unspecified launch failure", "launch failed",
               "illegal instruction", "misaligned address", "invalid program counter", "hardware stack error",
               "uncorrectable ecc", "launch timed out", "address space", "unknown error")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_CAPTURE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL, as trtexec captures


def is_fatal(message: str) -> bool:
    """Whether a CUDA error message names a sticky error (the context is lost, only a new process recovers)."""
    text = message.lower()
    return any(part in text for part in FATAL_TEXTS)


class _DriverError(Exception):
    def __init__(self, call: str, code: int, text: str) -> None:
        super().__init__(f"{call} failed: CUDA error {code} ({text})")
        self.code = code


def _check(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one CUDA call; any failure becomes BackendError, a sticky one DeviceLostError (message says `what`)."""
    try:
        return fn(*args)
    except (BackendError, DeviceLostError):
        raise
    except Exception as exc:  # pycuda.driver.Error and its subclasses, ctypes driver errors: re-raised as ours
        fatal = getattr(exc, "code", None) in FATAL_CODES or is_fatal(str(exc))
        if fatal:
            msg = f"CUDA {what}: {exc}; the GPU context is lost, the process must restart"
            raise DeviceLostError(msg) from exc
        msg = f"CUDA {what}: {type(exc).__name__}: {exc}"
        raise BackendError(msg) from exc


# driver (ctypes) --------------------------------------------------------------------------------------------------
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
    """Call driver function `name`; raise _DriverError with CUDA's own error name on a non-zero CUresult."""
    lib = _driver()
    code = int(getattr(lib, name)(*args))
    if code != 0:
        text = ctypes.c_char_p()
        lib.cuGetErrorString(code, ctypes.byref(text))
        raise _DriverError(name, code, (text.value or b"?").decode())


@dataclass(frozen=True)
class DeviceInfo:
    """What bundle.json records about the GPU an engine was built for."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes
    driver_version: str  # "12.2"


def device_info(index: int = 0) -> DeviceInfo:
    """Facts about GPU `index` from the driver, without creating a context (works without pycuda).

    Raises:
        BackendError: no driver, no CUDA device, or no device `index`.
    """
    _check("cuInit", _cu, "cuInit", 0)
    count, version = ctypes.c_int(), ctypes.c_int()
    _check("cuDeviceGetCount", _cu, "cuDeviceGetCount", ctypes.byref(count))
    if index >= count.value:
        msg = f"no CUDA device {index}: the driver sees {count.value} device(s)"
        raise BackendError(msg)
    dev, major, minor, total = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    name = ctypes.create_string_buffer(256)
    _check("cuDeviceGet", _cu, "cuDeviceGet", ctypes.byref(dev), index)
    _check("cuDeviceGetName", _cu, "cuDeviceGetName", name, 256, dev)
    _check("cuDeviceGetAttribute", _cu, "cuDeviceGetAttribute", ctypes.byref(major), _CC_MAJOR, dev)
    _check("cuDeviceGetAttribute", _cu, "cuDeviceGetAttribute", ctypes.byref(minor), _CC_MINOR, dev)
    _check("cuDeviceTotalMem", _cu, "cuDeviceTotalMem_v2", ctypes.byref(total), dev)
    _check("cuDriverGetVersion", _cu, "cuDriverGetVersion", ctypes.byref(version))
    v = version.value
    return DeviceInfo(index, name.value.decode(), f"{major.value}.{minor.value}", total.value,
                      f"{v // 1000}.{(v % 1000) // 10}")


# context ----------------------------------------------------------------------------------------------------------
def _pycuda() -> Any:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]
    except ImportError as exc:
        msg = f"pycuda is not installed ({exc}); on Jetson use JetPack's python3-pycuda, elsewhere pip install pycuda"
        raise BackendError(msg) from None
    return cuda


class CudaContext:
    """The device's primary context, retained once and pushed around each piece of CUDA work."""

    def __init__(self, index: int = 0) -> None:
        self.cuda = _pycuda()
        _check("cuInit", self.cuda.init)
        self.device = _check("cuDeviceGet", self.cuda.Device, index)
        self._ctx: Any = _check("cuDevicePrimaryCtxRetain", self.device.retain_primary_context)

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make the context current on this thread for the block (TensorRT and pycuda calls inside use it)."""
        if self._ctx is None:
            msg = "CUDA context already released (backend closed)"
            raise BackendError(msg)
        _check("cuCtxPushCurrent", self._ctx.push)
        try:
            yield
        finally:
            _check("cuCtxPopCurrent", self.cuda.Context.pop)

    def close(self) -> None:
        """Release the primary context (last step of teardown: every buffer and stream is gone by now)."""
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            _check("cuDevicePrimaryCtxRelease", ctx.detach)


# memory, stream, event --------------------------------------------------------------------------------------------
class PinnedBuffer:
    """Page-locked host memory as a numpy array (async copies need it); `close()` frees it."""

    def __init__(self, cuda: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.array: np.ndarray = _check("cuMemHostAlloc", cuda.pagelocked_empty, shape, dtype)

    def close(self) -> None:
        """Free the page-locked allocation (the array must not be used afterwards)."""
        allocation: Any = self.array.base  # pycuda's HostAllocation behind the array
        if allocation is not None:
            _check("cuMemFreeHost", allocation.free)


class DeviceBuffer:
    """Device memory of `nbytes`; `ptr` is what TensorRT's set_tensor_address takes."""

    def __init__(self, cuda: Any, nbytes: int) -> None:
        self._alloc: Any = _check("cuMemAlloc", cuda.mem_alloc, max(1, nbytes))
        self.ptr = int(self._alloc)
        self.nbytes = nbytes

    def close(self) -> None:
        """Free the device allocation; a second call does nothing."""
        if self._alloc is not None:
            alloc, self._alloc = self._alloc, None
            _check("cuMemFree", alloc.free)


class StreamEvent:
    """A slot's own stream (work on it runs in order) and the event recorded at the end of each submission."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self.stream: Any = _check("cuStreamCreate", cuda.Stream)
        self.event: Any = _check("cuEventCreate", cuda.Event, cuda.event_flags.DISABLE_TIMING)

    @property
    def handle(self) -> int:
        """The CUstream handle, as TensorRT's execute_async_v3 takes it."""
        return int(self.stream.handle)

    def htod(self, device: DeviceBuffer, host: np.ndarray) -> None:
        """Enqueue a copy of `host` (pinned, contiguous) to the start of `device`."""
        _check("cuMemcpyHtoDAsync", self.cuda.memcpy_htod_async, device.ptr, host, self.stream)

    def dtoh(self, host: np.ndarray, device: DeviceBuffer) -> None:
        """Enqueue a copy of the first host.nbytes of `device` into `host` (pinned, contiguous)."""
        _check("cuMemcpyDtoHAsync", self.cuda.memcpy_dtoh_async, host, device.ptr, self.stream)

    def record(self) -> None:
        """Record the event after everything enqueued so far."""
        _check("cuEventRecord", self.event.record, self.stream)

    def wait_event(self) -> None:
        """Block until the last recorded event fired (pycuda releases the GIL while it blocks)."""
        _check("cuEventSynchronize", self.event.synchronize)

    def fired(self) -> bool:
        """Whether the last recorded event has fired (non-blocking)."""
        return bool(_check("cuEventQuery", self.event.query))

    def drain(self) -> None:
        """Block until everything enqueued on the stream finished (after a submission that failed half-way)."""
        _check("cuStreamSynchronize", self.stream.synchronize)

    def close(self) -> None:
        """Drop the event and stream."""
        self.event = None
        self.stream = None  # pycuda destroys both when the last reference goes


# CUDA graph -------------------------------------------------------------------------------------------------------
class CudaGraph:
    """Copy + enqueue captured once on a stream and replayed with one launch (driver API, as trtexec does)."""

    def __init__(self, stream: StreamEvent, enqueue: Callable[[], None]) -> None:
        """Capture `enqueue()` on `stream`; BackendError if capture or instantiation fails (caller falls back)."""
        self._graph, self._exec = ctypes.c_void_p(), ctypes.c_void_p()
        handle = ctypes.c_void_p(stream.handle)
        _check("cuStreamBeginCapture", _cu, "cuStreamBeginCapture_v2", handle, _CAPTURE_THREAD_LOCAL)
        try:
            try:
                enqueue()
            finally:  # always end the capture, or the stream stays in capture mode and unusable
                _check("cuStreamEndCapture", _cu, "cuStreamEndCapture", handle, ctypes.byref(self._graph))
            _check("cuGraphInstantiate", _cu, "cuGraphInstantiateWithFlags", ctypes.byref(self._exec), self._graph,
                   ctypes.c_ulonglong(0))
        except BaseException:
            with contextlib.suppress(BackendError):
                self.close()
            raise

    def launch(self, stream: StreamEvent) -> None:
        """Enqueue one replay of the captured work on `stream`."""
        _check("cuGraphLaunch", _cu, "cuGraphLaunch", self._exec, ctypes.c_void_p(stream.handle))

    def close(self) -> None:
        """Destroy the executable graph, then the graph."""
        if self._exec.value:
            _check("cuGraphExecDestroy", _cu, "cuGraphExecDestroy", self._exec)
            self._exec = ctypes.c_void_p()
        if self._graph.value:
            _check("cuGraphDestroy", _cu, "cuGraphDestroy", self._graph)
            self._graph = ctypes.c_void_p()
