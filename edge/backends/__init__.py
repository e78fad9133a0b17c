"""Inference backends behind one interface, so the pipeline never knows which runtime it drives.

A backend owns its input buffers (page-locked for TensorRT) in a ring of `slots`; the pipeline's stages use them
without copying:

    slot = backend.acquire()            # preprocess thread: blocks until a slot is free
    slot.input[i] = resized frame       # write straight into the backend's (pinned) buffer, i < backend.max_batch
    backend.submit(slot, n)             # infer thread: enqueue inference of the first n images (may be async)
    outputs = backend.wait(slot)        # postprocess thread: block until done; arrays valid until release()
    backend.release(slot)               # slot may be reused

`infer(images)` wraps those steps for callers that do not pipeline (check, bench, evaluation). The backend module
is chosen by name and imported only when selected, so `tensorrt`/`pycuda` load only for `backend = "tensorrt"`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge.contract import ModelOutputs
from edge.errors import BackendError

if TYPE_CHECKING:
    from edge.bundle import Bundle
    from edge.config import ModelConfig


class Slot(Protocol):
    """One in-flight unit of work: a backend-owned input buffer and whatever the runtime needs to track it."""

    index: int
    input: np.ndarray  # (max_batch, H, W, 3) uint8, owned by the backend
    n: int  # images submitted


class Backend(Protocol):
    """The interface every backend module's `load(bundle, config) -> Backend` returns."""

    name: str
    max_batch: int
    input_shape: tuple[int, int, int]  # (H, W, 3)
    model_file: str  # the bundle file that runs (FP32 or INT8 ONNX, or the engine): its hash is in every verdict

    @property
    def fatal(self) -> BaseException | None:
        """The error that makes every later inference fail (a lost GPU context), or None; the daemon then exits 1."""
        ...

    def acquire(self) -> Slot:
        """A free slot whose `input` the caller fills; blocks while every slot is in flight."""
        ...

    def submit(self, slot: Slot, n: int) -> None:
        """Start inference on the first `n` images of `slot.input`; may return before it finishes."""
        ...

    def wait(self, slot: Slot) -> ModelOutputs:
        """Block until `slot` is done; the arrays stay valid until `release(slot)`."""
        ...

    def release(self, slot: Slot) -> None:
        """Hand `slot` back for reuse."""
        ...

    def infer(self, images: np.ndarray, batch: int | None = None) -> ModelOutputs:
        """Judge `images` in batches of `batch` (default max_batch), every slot in flight; returns copies.

        For callers that do not pipeline (check, bench, evaluation): acquire/submit/wait/release as the daemon
        drives them, so what they measure is the daemon's path.
        """
        ...

    def close(self) -> None:
        """Free every buffer and runtime object, in the order the runtime needs."""
        ...


_MODULES = {"onnxruntime": "edge.backends.ort", "tensorrt": "edge.backends.trt"}


def load_backend(bundle: Bundle, config: ModelConfig) -> Backend:
    """Import only the selected backend's module and load `bundle` into it."""
    try:
        module = importlib.import_module(_MODULES[config.backend])
    except ImportError as exc:
        extra = " (install inspectd[gpu] on a GPU box)" if config.backend == "tensorrt" else ""
        msg = f"model.backend = {config.backend!r} cannot be loaded: {exc}{extra}"
        raise BackendError(msg) from exc
    return module.load(bundle, config)
