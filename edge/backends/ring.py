"""A ring of in-flight slots and the pipelined backend built on it, independent of any GPU library.

The pipeline's stages call the backend from three threads (preprocess fills a slot, infer submits it, postprocess
waits on it). The ring keeps that safe and ordered: slots are handed out round-robin, a slot is never handed out
again before it was released (after its event fired), and waits must come in submission order, so verdicts leave
in frame order. `RingBackend` implements the Backend protocol on top of an `Executor` — the one seam to the GPU:
TensorRT + CUDA streams in edge/backends/trt.py, plain numpy in the tests.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge.contract import OUTPUT_DTYPES, OUTPUT_NAMES, ModelOutputs
from edge.errors import BackendError, DeviceLostError
from edge.log import get_logger

log = get_logger(__name__)


FREE, FILLING, IN_FLIGHT, DONE = "free", "filling", "in_flight", "done"


class Ring:
    """Slot bookkeeping: slots handed out round-robin, none reused before released (its event fired), FIFO waits."""

    def __init__(self, size: int) -> None:
        self.states = [FREE] * size
        self._next = 0
        self._fifo: deque[int] = deque()  # submitted slots in submission order
        self._cond = threading.Condition()
        self.closed = False

    def acquire(self, timeout: float | None = None) -> int:
        """The next slot in ring order, blocking until it is free (so frames leave in the order they came)."""
        with self._cond:
            i = self._next
            if not self._cond.wait_for(lambda: self.closed or self.states[i] == FREE, timeout):
                msg = f"no free slot within {timeout} s (slot {i} is {self.states[i]})"
                raise BackendError(msg)
            if self.closed:
                msg = "backend closed"
                raise BackendError(msg)
            self.states[i], self._next = FILLING, (i + 1) % len(self.states)
            return i

    def submitted(self, i: int, ok: bool = True) -> None:
        """FILLING -> IN_FLIGHT; a failed submission is in flight too (it may have enqueued copies) but not awaited."""
        with self._cond:
            self._expect(i, FILLING, "submit")
            self.states[i] = IN_FLIGHT
            if ok:
                self._fifo.append(i)

    def waiting(self, i: int) -> None:
        """Check `i` is the oldest submission: waits in submission order keep verdicts in frame order."""
        with self._cond:
            self._expect(i, IN_FLIGHT, "wait")
            if not self._fifo or self._fifo[0] != i:
                msg = f"wait on slot {i} out of order: slot {self._fifo[0] if self._fifo else None} was submitted first"
                raise BackendError(msg)

    def done(self, i: int) -> None:
        """IN_FLIGHT -> DONE: the slot's work finished (or failed); its outputs may be read until release."""
        with self._cond:
            self.states[i] = DONE
            if i in self._fifo:
                self._fifo.remove(i)

    def release(self, i: int) -> None:
        """Free slot `i`; the caller has made sure its work finished (the ring never frees in-flight memory)."""
        with self._cond:
            if self.states[i] == IN_FLIGHT:
                msg = f"slot {i} released while in flight; synchronise it first"
                raise BackendError(msg)
            self.states[i] = FREE
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse further acquires and wake any thread blocked in acquire()."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_unfilled(self, timeout: float) -> bool:
        """Wait until no slot is being filled (a stage writing into its buffer); False if one still is."""
        with self._cond:
            return self._cond.wait_for(lambda: FILLING not in self.states, timeout)

    def _expect(self, i: int, state: str, what: str) -> None:
        if self.states[i] != state:
            msg = f"{what} on slot {i} which is {self.states[i]}, expected {state}"
            raise BackendError(msg)


class Executor(Protocol):
    """The seam to the GPU: per-slot buffers and asynchronous work (TensorRT + CUDA here, numpy in tests)."""

    def input_buffer(self, slot: int) -> np.ndarray:
        """The slot's input array (max_batch, H, W, 3) uint8, written in place by the preprocess stage."""
        ...

    def output_buffers(self, slot: int) -> dict[str, np.ndarray]:
        """The slot's output arrays at max batch, by ONNX output name (score, anomaly_map, mask)."""
        ...

    def enqueue(self, slot: int, n: int) -> None:
        """Start inference of the slot's first `n` images without waiting for it."""
        ...

    def synchronize(self, slot: int) -> None:
        """Block until everything enqueued for the slot has finished."""
        ...

    def close(self, free: bool = True) -> None:
        """Free everything, never raising; called once, after in-flight work finished.

        `free=False`: the device is lost; make no GPU call, only drop the references.
        """
        ...


@dataclass
class RingSlot:
    """The Slot protocol: a ring index and the executor-owned input buffer."""

    index: int
    input: np.ndarray  # (max_batch, H, W, 3) uint8, page-locked on the GPU path
    n: int = 0


class RingBackend:
    """The Backend protocol over an Executor: ring order, batch limits, output views, device-lost handling."""

    def __init__(self, executor: Executor, *, name: str, max_batch: int, input_shape: tuple[int, int, int],
                 slots: int, model_file: str = "") -> None:
        self.name, self.max_batch, self.input_shape = name, max_batch, input_shape
        self.model_file = model_file  # the bundle file that runs (its hash goes into every verdict)
        self.executor, self.ring = executor, Ring(slots)
        self.slots = [RingSlot(i, executor.input_buffer(i)) for i in range(slots)]
        self.fatal: DeviceLostError | None = None
        self._closed = False

    def acquire(self) -> RingSlot:
        """The next slot in ring order (blocks until it is free)."""
        self._alive()
        return self.slots[self.ring.acquire()]

    def submit(self, slot: RingSlot, n: int) -> None:
        """Enqueue the first `n` images of the slot; returns before inference is done."""
        if not 1 <= n <= self.max_batch:
            msg = f"batch of {n} images, expected 1..{self.max_batch} (model.max_batch / engine profile)"
            raise ValueError(msg)
        self._alive()
        slot.n = n
        try:
            self._gpu(self.executor.enqueue, slot.index, n)
        except BaseException:
            self.ring.submitted(slot.index, ok=False)
            raise
        self.ring.submitted(slot.index)

    def wait(self, slot: RingSlot) -> ModelOutputs:
        """Block on the slot's event; the arrays are views into its pinned outputs, valid until release()."""
        self.ring.waiting(slot.index)
        try:
            self._gpu(self.executor.synchronize, slot.index)
        finally:
            self.ring.done(slot.index)
        out = self.executor.output_buffers(slot.index)  # FP16 engines may return half maps: widened to the contract
        return ModelOutputs(*(out[k][: slot.n].astype(OUTPUT_DTYPES[k], copy=False) for k in OUTPUT_NAMES))

    def release(self, slot: RingSlot) -> None:
        """Give the slot back; work never waited for (submit failed, error path) is drained first."""
        if self.ring.states[slot.index] == IN_FLIGHT:  # never waited (submit failed, or an error path): drain first
            try:
                self._gpu(self.executor.synchronize, slot.index)
            except BackendError:
                log.warning("slot_drain_failed", slot=slot.index)
            self.ring.done(slot.index)
        slot.n = 0
        self.ring.release(slot.index)

    def infer(self, images: np.ndarray, batch: int | None = None) -> ModelOutputs:
        """Judge (N, H, W, 3) uint8 images in chunks of `batch` (default max_batch), every slot in flight.

        The next chunk is submitted before the oldest is waited on, as the daemon's stages do; returns copies.
        """
        step = min(batch or self.max_batch, self.max_batch)
        if images.ndim != 4 or images.shape[1:] != self.input_shape or images.dtype != np.uint8:
            h, w, c = self.input_shape
            msg = f"images of shape {images.shape} {images.dtype}, expected (N, {h}, {w}, {c}) uint8"
            raise ValueError(msg)
        pending: deque[RingSlot] = deque()
        parts: list[list[np.ndarray]] = []
        try:
            for start in range(0, len(images), step):
                if len(pending) == len(self.slots):
                    parts.append(self._collect(pending.popleft()))
                chunk = images[start : start + step]
                slot = self.acquire()
                pending.append(slot)
                slot.input[: len(chunk)] = chunk
                self.submit(slot, len(chunk))
            while pending:
                parts.append(self._collect(pending.popleft()))
        finally:
            for slot in pending:
                self.release(slot)
        return ModelOutputs(*(np.concatenate(p) for p in zip(*parts, strict=True)))

    def _collect(self, slot: RingSlot) -> list[np.ndarray]:
        try:
            return [a.copy() for a in self.wait(slot)]
        finally:
            self.release(slot)

    def close(self, timeout: float = 5.0) -> None:
        """Teardown, never raising: stop handing out slots, let in-flight work finish, then free.

        Memory is freed only when no stage is writing into a slot any more (waiting up to `timeout` for one to
        finish): freeing pinned memory under a writer is a use-after-free. After a device loss nothing is freed
        on the GPU (no CUDA call can succeed on a lost context); the process exits next and the driver cleans up.
        """
        if self._closed:
            return
        self._closed = True
        self.ring.close()
        if not self.ring.wait_unfilled(timeout):
            filling = [i for i, state in enumerate(self.ring.states) if state == FILLING]
            log.error("backend_not_freed", backend=self.name, slots_being_filled=filling, timeout_s=timeout)
            return
        for i, state in enumerate(self.ring.states):
            if state == IN_FLIGHT and self.fatal is None:
                try:
                    self.executor.synchronize(i)
                except BackendError:
                    log.warning("slot_drain_failed", slot=i)
        try:
            self.executor.close(free=self.fatal is None)
        except Exception:  # logged: a teardown bug must not skip the rest of the daemon's shutdown
            log.exception("backend_close_failed", backend=self.name)
            return
        log.info("backend_closed", backend=self.name, freed=self.fatal is None)

    def _alive(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        if self._closed:
            msg = "backend closed"
            raise BackendError(msg)

    def _gpu(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except DeviceLostError as exc:
            if self.fatal is None:
                self.fatal = exc
                device_lost(exc)
            raise


def device_lost(exc: DeviceLostError) -> None:
    """Log it; the daemon sees `backend.fatal`, drains the admitted frames as error verdicts, exits non-zero."""
    log.critical("cuda_device_lost", error=str(exc))
