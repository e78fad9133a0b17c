"""ONNX Runtime backend: CPU by default, CUDA when that execution provider is installed.

Outputs are bound (IO binding) to arrays preallocated per slot, so steady-state inference allocates nothing. The
TensorRT execution provider is left out on purpose: it builds an engine at every start-up (minutes on a Jetson);
`model.backend = "tensorrt"` runs the bundle's prebuilt engine instead.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from edge.backends import precision
from edge.bundle import Bundle
from edge.config import ModelConfig
from edge.contract import ModelOutputs, check_io, output_contracts
from edge.errors import BundleError
from edge.log import get_logger

log = get_logger(__name__)
# What InferenceSession raises for a file it cannot use (each derives from Exception directly, not RuntimeError).
_ORT_LOAD_ERRORS = (
    ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile, ort_errors.NoModel, ort_errors.NotImplemented, ort_errors.RuntimeException,
    ort_errors.EPFail, ort_errors.EngineError, RuntimeError, ValueError, OSError,
)
_ORT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass
class OrtSlot:
    """A backend-owned input buffer and the output arrays its inference writes into."""

    index: int
    input: np.ndarray  # (max_batch, H, W, 3) uint8
    outputs: tuple[np.ndarray, ...]  # score, anomaly_map, mask (contract order) at max_batch
    n: int = 0
    bindings: dict[int, ort.IOBinding] = field(default_factory=dict, repr=False)  # per batch size, made once


def choose_model(bundle: Bundle, config: ModelConfig, make: Callable[[Path], ort.InferenceSession]) -> Choice:
    """The graph for `model.precision`, and its session; "auto" times FP32 and INT8 here (cached per CPU+bundle).

    Only files listed (so hash-checked) in bundle.json are used.
    """
    flavour = next((f for f in bundle.meta.int8 if f.target == "cpu"), None)
    if flavour is not None and flavour.file not in bundle.meta.files:
        msg = f"bundle {bundle.path}: INT8 file {flavour.file} is not listed (hash-checked) in bundle.json"
        raise BundleError(msg)
    sessions: dict[str, ort.InferenceSession] = {}

    def session(name: str) -> ort.InferenceSession:
        if name not in sessions:
            sessions[name] = make(bundle.file(name))
        return sessions[name]

    def measure() -> tuple[float, float]:
        spec = bundle.meta.input
        feed = {spec.name: np.full((config.max_batch, spec.height, spec.width, 3), 128, np.uint8)}
        fp32, int8 = session("model.onnx"), session(flavour.file)  # type: ignore[union-attr]
        return precision.paired_ms(lambda: fp32.run(None, feed), lambda: int8.run(None, feed))

    files = bundle.meta.files
    decision = precision.decide(
        config.precision,
        "model.onnx",
        flavour.file if flavour is not None else None,
        bundle=str(bundle.path),
        hashes=(files.get("model.onnx", ""), files.get(flavour.file, "")) if flavour is not None else None,
        cache=config.state_dir / precision.CACHE_FILE,
        runtime=f"onnxruntime {ort.__version__}",
        threads=config.threads,
        batch=config.max_batch,
        measure=measure,
    )
    return Choice(bundle.file(decision.file), decision, session(decision.file))


@dataclass(frozen=True)
class Choice:
    """The graph the backend runs, the decision that picked it, and its session."""

    path: Path
    decision: precision.Decision
    session: ort.InferenceSession


def session_options(threads: int, *, integer: bool) -> ort.SessionOptions:
    """The daemon's CPU session settings; `integer` graphs get exact U8U8 products on CPUs without VNNI."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # No spin-waiting between runs: spinning burns the cores capture/postprocess/MQTT need (measured by
    # `inspectd bench`: bare CPU per frame 33.8 -> 20.1 ms for padim on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if integer and not precision.has_vnni(precision.cpu_identity()):
        # U8S8 products saturate int16 on x86 without VNNI (AVX2 vpmaddubsw); the INT8 CPU flavour uses full 8-bit
        # weights, so ask for U8U8 there. Slower: the start-up timing decides whether INT8 still pays.
        options.add_session_config_entry("session.x64quantprecision", "1")
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class OrtBackend:
    """The Backend protocol on an onnxruntime.InferenceSession; `submit` runs synchronously, `wait` just returns."""

    fatal = None  # a CPU session has no sticky failure: each run succeeds or fails on its own

    def __init__(self, bundle: Bundle, config: ModelConfig) -> None:
        spec = bundle.meta.input
        self.max_batch = config.max_batch
        self.input_shape = (spec.height, spec.width, 3)
        providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        int8_files = {f.file for f in bundle.meta.int8}

        def make(path: Path) -> ort.InferenceSession:
            options = session_options(config.threads, integer=path.name in int8_files)
            try:
                return ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
            except _ORT_LOAD_ERRORS as exc:
                msg = f"bundle {bundle.path}: ONNX Runtime cannot load {path.name}: {exc}"
                raise BundleError(msg) from None

        choice = choose_model(bundle, config, make)
        path, self.session, self.decision = choice.path, choice.session, choice.decision
        self.model_file = path.relative_to(bundle.path).as_posix()
        self.provider = self.session.get_providers()[0]
        self.name = f"onnxruntime:{self.provider.removesuffix('ExecutionProvider').lower()}:{path.name}"
        self._check_io(bundle, path)
        self._outputs = output_contracts(spec.height, spec.width)
        self._slots = [
            OrtSlot(
                i,
                np.zeros((self.max_batch, *self.input_shape), np.uint8),
                tuple(np.zeros((self.max_batch, *c.shape), c.dtype) for c in self._outputs),
            )
            for i in range(config.slots)
        ]
        self._free: queue.Queue[OrtSlot] = queue.Queue()
        for slot in self._slots:
            self._free.put(slot)
        log.info("backend_loaded", backend=self.name, model=path.name, threads=config.threads,
                 **precision.as_log(self.decision))

    def _check_io(self, bundle: Bundle, path: Path) -> None:
        """Refuse a model whose inputs/outputs are not the bundle contract (a wrong model.onnx dropped in)."""
        spec = bundle.meta.input
        found = {
            a.name: (np.dtype(_ORT_TYPES[a.type]) if a.type in _ORT_TYPES else a.type, a.shape)
            for a in [*self.session.get_inputs(), *self.session.get_outputs()]
        }
        problem = check_io(found, spec.height, spec.width, input_name=spec.name)
        if problem:
            msg = f"bundle {bundle.path}: {path.name} does not match the bundle contract: {problem}"
            raise BundleError(msg)
        self._input_name = spec.name

    # Backend protocol -------------------------------------------------------------------------------------------
    def acquire(self) -> OrtSlot:
        """Block until a slot is free and hand it out."""
        return self._free.get()

    def submit(self, slot: OrtSlot, n: int) -> None:
        """Run the first `n` images of the slot's input (synchronously) into its output arrays."""
        if not 1 <= n <= self.max_batch:
            msg = f"batch of {n} images, expected 1..{self.max_batch} (model.max_batch)"
            raise ValueError(msg)
        binding = slot.bindings.get(n)
        if binding is None:
            # Bound once per slot and batch size: the input OrtValue is backed by the slot's own buffer (written in
            # place by preprocess) and the outputs by its arrays, so a binding stays valid. Building it every frame
            # held the GIL ~0.4 ms per frame on the inference thread, where every other stage waits for it.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self._input_name, slot.input[:n])
            for contract, array in zip(self._outputs, slot.outputs, strict=True):
                view = array[:n]
                binding.bind_output(contract.name, "cpu", 0, contract.dtype.type, view.shape, view.ctypes.data)
            slot.bindings[n] = binding
        slot.n = n
        self.session.run_with_iobinding(binding)

    def wait(self, slot: OrtSlot) -> ModelOutputs:
        """The slot's outputs for its `n` images: views valid until `release`."""
        return ModelOutputs(*(array[: slot.n] for array in slot.outputs))

    def release(self, slot: OrtSlot) -> None:
        """Return the slot to the ring."""
        slot.n = 0
        self._free.put(slot)

    def infer(self, images: np.ndarray, batch: int | None = None) -> ModelOutputs:
        """Judge `images` (N, H, W, 3) uint8 in chunks of `batch` (default max_batch); returns copies."""
        step = min(batch or self.max_batch, self.max_batch)
        parts = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            slot = self.acquire()
            try:
                slot.input[: len(chunk)] = chunk
                self.submit(slot, len(chunk))
                parts.append([a.copy() for a in self.wait(slot)])
            finally:
                self.release(slot)
        return ModelOutputs(*(np.concatenate(p) for p in zip(*parts, strict=True)))

    def close(self) -> None:
        """Drop the slots (the session goes with the object)."""
        self._slots.clear()


def load(bundle: Bundle, config: ModelConfig) -> OrtBackend:
    """Load `bundle` for ONNX Runtime (module entry point used by edge.backends.load_backend)."""
    return OrtBackend(bundle, config)
