"""The CUDA side of the TensorRT backend behind one seam: errors, device facts, and the layer that does the work.

Two layers implement `CudaLayer`, chosen by `model.cuda` and imported only when selected:

- "cuda-python" (default, `edge/backends/cuda_rt.py`): NVIDIA's `cuda.bindings` runtime API, what TensorRT's own
  samples use; wheels for CUDA 12 and 13, no compiler, works on JetPack 6 (cuda-python 12.x) and x86.
- "pycuda" (`edge/backends/cuda_pycuda.py`): the product card's alternative; it builds against the CUDA toolkit
  (pycuda >= 2025.1.2 for CUDA 13); the few driver calls it does not wrap go through ctypes.

Both keep the same rules: the device's primary context (shared with TensorRT) with blocking-sync scheduling, so a
wait sleeps instead of spinning a core a Jetson needs for capture and preprocessing; non-blocking streams, so the
legacy default stream (e.g. ONNX Runtime's CUDA provider in `inspectd check`) neither serialises with nor breaks a
capture; events with blocking sync and no timing, as trtexec creates them. Every failure becomes `BackendError`,
and a sticky one, after which no CUDA call in this process can succeed, `DeviceLostError`: the daemon then drains
with `error` verdicts and exits for systemd to restart it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from edge.errors import BackendError, DeviceLostError

T = TypeVar("T")
LayerName = Literal["cuda-python", "pycuda"]
DEFAULT_LAYER: LayerName = "cuda-python"
_MODULES = {"cuda-python": "edge.backends.cuda_rt", "pycuda": "edge.backends.cuda_pycuda"}

# CUDA error codes (driver CUresult and runtime cudaError_t agree on these) after which the context is unusable.
FATAL_CODES = {214: "ECC_UNCORRECTABLE", 700: "ILLEGAL_ADDRESS", 702: "LAUNCH_TIMEOUT", 710: "ASSERT",
               714: "HARDWARE_STACK_ERROR", 715: "ILLEGAL_INSTRUCTION", 716: "MISALIGNED_ADDRESS",
               717: "INVALID_ADDRESS_SPACE", 718: "INVALID_PC", 719: "LAUNCH_FAILED", 999: "UNKNOWN"}
# The same errors as cuGetErrorString / cudaGetErrorString spell them: what pycuda's and TensorRT's messages carry.
FATAL_TEXTS = ("illegal memory access", "illegal address", "unspecified launch failure", "launch failed",
               "device-side assert", "illegal instruction", "misaligned address", "invalid program counter",
               "hardware stack error", "uncorrectable ecc", "launch timed out", "address space", "unknown error")


def is_fatal(message: str) -> bool:
    """Whether a CUDA error message names a sticky error (the context is lost, only a new process recovers)."""
    text = message.lower()
    return any(part in text for part in FATAL_TEXTS)


def cuda_error(what: str, code: int | None, text: str) -> BackendError:
    """The exception for a failed CUDA call: DeviceLostError for a sticky error, else BackendError."""
    if code in FATAL_CODES or is_fatal(text):
        return DeviceLostError(f"CUDA {what}: {text}; the GPU context is lost, the process must restart")
    return BackendError(f"CUDA {what}: {text}")


def check(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Run one CUDA call that raises on failure (pycuda, ctypes); its exception becomes cuda_error(...)."""
    try:
        return fn(*args)
    except BackendError:
        raise
    except Exception as exc:  # pycuda.driver.Error and its subclasses, ctypes driver errors: re-raised as ours
        raise cuda_error(what, getattr(exc, "code", None), f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class DeviceInfo:
    """What bundle.json records about the GPU an engine was built for."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes
    driver_version: str  # "12.2"


# what a layer hands out -------------------------------------------------------------------------------------------
class PinnedBuffer(Protocol):
    """Page-locked host memory as a numpy array (async copies need it)."""

    array: np.ndarray

    def close(self) -> None:
        """Free it; the array must not be used afterwards."""
        ...


class DeviceBuffer(Protocol):
    """Device memory; `ptr` is what TensorRT's set_tensor_address takes."""

    ptr: int
    nbytes: int

    def close(self) -> None:
        """Free it; a second call does nothing."""
        ...


class Stream(Protocol):
    """A slot's own non-blocking stream and the blocking-sync event recorded at the end of each submission."""

    @property
    def handle(self) -> int:
        """The cudaStream_t / CUstream handle, as execute_async_v3 takes it."""
        ...

    def htod(self, device: DeviceBuffer, host: np.ndarray) -> None:
        """Enqueue a copy of `host` (pinned, contiguous) to the start of `device`."""
        ...

    def dtoh(self, host: np.ndarray, device: DeviceBuffer) -> None:
        """Enqueue a copy of the first host.nbytes of `device` into `host` (pinned, contiguous)."""
        ...

    def record(self) -> None:
        """Record the event after everything enqueued so far."""
        ...

    def wait_event(self) -> None:
        """Block (sleeping, not spinning, and without the GIL) until the last recorded event fired."""
        ...

    def fired(self) -> bool:
        """Whether the last recorded event has fired (non-blocking)."""
        ...

    def drain(self) -> None:
        """Block until everything enqueued on the stream finished (after a submission that failed half-way)."""
        ...

    def close(self) -> None:
        """Destroy the event and the stream."""
        ...


class Graph(Protocol):
    """Work captured once on a stream, replayed with one launch."""

    def launch(self, stream: Stream) -> None:
        """Enqueue one replay on `stream`."""
        ...

    def close(self) -> None:
        """Destroy the executable graph, then the graph."""
        ...


class Context(Protocol):
    """The device's primary context, shared with TensorRT."""

    def current(self) -> AbstractContextManager[None]:
        """Make the context current on this thread for the block (the pipeline's stages are different threads)."""
        ...

    def close(self) -> None:
        """Release the context (last step of teardown)."""
        ...


class CudaLayer(Protocol):
    """One CUDA library behind the seam (cuda-python or pycuda)."""

    name: str

    def version(self) -> str:
        """What `inspectd check` prints, e.g. 'cuda-python 12.6.2 (CUDA runtime 12.6)'."""
        ...

    def device_info(self, index: int = 0) -> DeviceInfo:
        """Facts about GPU `index`; BackendError when there is no driver or no such device."""
        ...

    def context(self, index: int = 0) -> Context:
        """Retain device `index`'s primary context with blocking-sync scheduling."""
        ...

    def pinned(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> PinnedBuffer:
        """Page-locked host memory of `shape` and `dtype`."""
        ...

    def device(self, nbytes: int) -> DeviceBuffer:
        """Device memory of `nbytes` (at least 1)."""
        ...

    def stream(self) -> Stream:
        """A non-blocking stream with its blocking-sync event."""
        ...

    def capture(self, stream: Stream, enqueue: Callable[[], None]) -> Graph:
        """Capture `enqueue()` on `stream` (thread-local mode, as trtexec does) and instantiate it.

        Raises:
            BackendError: capture or instantiation failed; the stream is out of capture mode and the error state
                cleared (`clear_error`), so the caller can fall back to plain enqueue.
        """
        ...

    def clear_error(self) -> None:
        """Reset the runtime's last-error state after a failed capture (trtexec calls cudaGetLastError)."""
        ...


def import_library(module: str, package: str, how: str) -> Any:
    """Import a layer's CUDA library, or raise BackendError saying it is missing and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"{package} is not installed ({exc}): {how}"
        raise BackendError(msg) from None


def load_layer(name: str = DEFAULT_LAYER) -> CudaLayer:
    """The named layer; its CUDA library is imported only now (BackendError saying how to install it)."""
    if name not in _MODULES:
        msg = f"model.cuda = {name!r}: expected one of {sorted(_MODULES)}"
        raise BackendError(msg)
    layer: CudaLayer = importlib.import_module(_MODULES[name]).Layer()
    return layer
