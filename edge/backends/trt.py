"""TensorRT backend: the bundle's prebuilt engine, a ring of pinned-memory slots, asynchronous CUDA streams.

Read top to bottom in execution order: what the engine must be (version/GPU checks, buffer plan, contract), which
batch a submission runs at, then the executor (edge/backends/ring.py's seam) and `load`. Each slot owns page-locked
host buffers, device buffers, an execution context, a stream and an event: `submit` enqueues H2D copy,
`execute_async_v3` and D2H copy (or replays them as one CUDA graph) and records the event without synchronising;
`wait` blocks on that event only. All CUDA goes through the `model.cuda` layer (edge/backends/cuda_mem.py).
Everything slow happens at load: per slot one plain run, then the capture, so no graph is ever captured on the
inference thread. The ring and the backend the pipeline drives (`RingBackend`) are GPU-free, so tests run them on
numpy buffers. TensorRT 10/11 API only (named I/O tensors, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.backends import cuda_mem as cm
from edge.backends.ring import RingBackend
from edge.bundle import Bundle
from edge.config import ModelConfig
from edge.contract import INPUT_NAME, OUTPUT_NAMES, check_io
from edge.errors import BackendError, BundleError, DeviceLostError, InspectdError
from edge.log import get_logger

log = get_logger(__name__)
REBUILD = "rebuild it on this box with `inspectd export --engine`"
NP_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
              "BOOL": np.bool_, "UINT8": np.uint8}


# 1. what the engine must be -------------------------------------------------------------------------------------
def version_key(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0): engines are tied to major.minor.patch; the build number does not matter."""
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def check_engine_info(bundle: Bundle, trt_version: str, gpu: cm.DeviceInfo | None = None) -> str:
    """Return the engine file name, or refuse an engine missing or built for another TensorRT version or GPU."""
    info, where = bundle.meta.engine, f"bundle {bundle.path}"
    if info is None:
        msg = f"{where} has no TensorRT engine (bundle.json has no 'engine'); build one with `inspectd export --engine`"
        raise BundleError(msg)
    if info.file not in bundle.meta.files:
        msg = f"{where}: engine {info.file} is not listed (hash-checked) in bundle.json; {REBUILD}"
        raise BundleError(msg)
    if version_key(info.tensorrt_version) != version_key(trt_version):
        msg = (f"{where}: {info.file} was built with TensorRT {info.tensorrt_version}, this box has TensorRT "
               f"{trt_version}; an engine only loads on the TensorRT version that built it: {REBUILD}")
        raise BundleError(msg)
    if gpu is not None and (info.compute_capability != gpu.compute_capability or info.gpu_name != gpu.name):
        msg = (f"{where}: {info.file} was built for {info.gpu_name} (compute capability {info.compute_capability}), "
               f"this box has {gpu.name} ({gpu.compute_capability}); {REBUILD}")
        raise BundleError(msg)
    return info.file


def enum_name(value: Any) -> str:
    """TensorRT enum member -> 'INPUT' / 'UINT8' (pybind11 `.name`, or the tail of `str()`)."""
    return str(getattr(value, "name", None) or str(value).rsplit(".", 1)[-1])


@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor's buffer plan: shape at the slot's max batch (dim 0 is the batch)."""

    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def nbytes(self, batch: int | None = None) -> int:
        """Bytes for `batch` images (default: the planned max batch)."""
        per_image = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        return per_image * (self.shape[0] if batch is None else batch)


def profile_batch(engine: Any, name: str = INPUT_NAME, profile: int = 0) -> tuple[int, int, int]:
    """(min, opt, max) batch of `name` in optimisation profile `profile`; a static engine reports its fixed batch."""
    shape = tuple(engine.get_tensor_shape(name))
    if shape and shape[0] >= 0:
        return shape[0], shape[0], shape[0]
    lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(name, profile))
    return int(lo[0]), int(opt[0]), int(hi[0])


def plan_buffers(engine: Any, max_batch: int, profile: int = 0) -> list[TensorSpec]:
    """Every I/O tensor of `engine` (TensorRT ICudaEngine or a stand-in) with dtype and shape at `max_batch`.

    Dynamic input dims take the profile's max (only the batch may be dynamic in our graphs); output dim 0 is the
    batch. Raises BundleError for a dtype numpy cannot hold or a dynamic dim other than the batch.
    """
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = enum_name(engine.get_tensor_mode(name)) == "INPUT"
        dtype_name = enum_name(engine.get_tensor_dtype(name))
        if dtype_name not in NP_DTYPES:
            msg = f"engine tensor {name!r} has dtype {dtype_name}, expected one of {sorted(NP_DTYPES)}; {REBUILD}"
            raise BundleError(msg)
        shape = [int(d) for d in engine.get_tensor_shape(name)]
        if is_input and any(d < 0 for d in shape[1:]):
            shape = [int(d) for d in engine.get_tensor_profile_shape(name, profile)[2]]
        if not shape or any(d < 0 for d in shape[1:]):
            msg = f"engine tensor {name!r} has shape {shape}: only the batch dimension may be dynamic; {REBUILD}"
            raise BundleError(msg)
        specs.append(TensorSpec(name, is_input, np.dtype(NP_DTYPES[dtype_name]), (max_batch, *shape[1:])))
    return specs


def check_contract(specs: list[TensorSpec], bundle: Bundle) -> None:
    """Refuse an engine whose tensors are not the bundle contract (uint8 image in; score, map, mask out)."""
    problem = check_io({s.name: (s.dtype, s.shape) for s in specs}, bundle.meta.input.height,
                       bundle.meta.input.width, half_floats=True)
    if problem:
        msg = f"bundle {bundle.path}: the engine does not match the bundle contract: {problem}; {REBUILD}"
        raise BundleError(msg)


def effective_max_batch(asked: int, profile: tuple[int, int, int]) -> int:
    """model.max_batch clamped to the engine profile's max (a bigger batch than the engine was built for fails)."""
    _, _, hi = profile
    if asked > hi:
        log.warning("max_batch_clamped", asked=asked, engine_max=hi, hint="rebuild with a larger max batch")
    return min(asked, hi)


# 2. which batch a submission runs at ------------------------------------------------------------------------------
def buffer_rows(max_batch: int, profile: tuple[int, int, int]) -> int:
    """Rows of every slot buffer: the largest batch submitted, or the engine's minimum batch if that is larger."""
    return max(max_batch, profile[0])


def run_batch(n: int, *, rows: int, min_batch: int, fixed: bool) -> int:
    """The batch TensorRT runs for a submission of `n` images (rows past `n` are padding).

    `fixed` (CUDA graphs on, or an engine built for one batch): always `rows`. A graph bakes in the context's
    shapes, so one graph per slot serves every batch only at one size: partial batches are padded to the max and
    the graph is captured once at load instead of on the inference thread. An engine whose profile has min == max
    only takes that batch. Otherwise the batch itself, at least the profile's minimum.
    """
    return rows if fixed else max(n, min_batch)


# 3. the TensorRT + CUDA executor -------------------------------------------------------------------------------------
def make_trt_logger(trt: Any) -> Any:
    """A trt.ILogger that sends TensorRT's messages to structlog and keeps the last error for BackendError texts."""

    class _TrtLogger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.last_error = ""

        def log(self, severity: Any, msg: str) -> None:
            level = enum_name(severity)
            if level in {"ERROR", "INTERNAL_ERROR"}:
                self.last_error = msg
                log.error("tensorrt", message=msg)
            elif level == "WARNING":
                log.warning("tensorrt", message=msg)
            else:
                log.debug("tensorrt", message=msg, severity=level.lower())

    return _TrtLogger()


@dataclass
class _GpuSlot:
    context: Any
    host: dict[str, cm.PinnedBuffer]
    device: dict[str, cm.DeviceBuffer]
    cuda: cm.Stream
    graph: cm.Graph | None = None
    shape_n: int = 0
    recorded: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class TrtExecutor:
    """Slots of (execution context, pinned + device buffers, stream, event) on one engine; all CUDA via `layer`.

    `specs` are planned at `buffer_rows()`; `min_batch` is the engine profile's minimum batch.
    """

    def __init__(self, layer: cm.CudaLayer, ctx: cm.Context, runtime: Any, engine: Any, logger: Any,
                 specs: list[TensorSpec], *, slots: int, cuda_graphs: bool, min_batch: int = 1) -> None:
        self.layer, self.ctx, self.runtime, self.engine, self.logger = layer, ctx, runtime, engine, logger
        self.specs = specs
        self.rows = specs[0].shape[0]
        self.image_tail = next(p for p in specs if p.name == INPUT_NAME).shape[1:]
        self.cuda_graphs, self.min_batch = cuda_graphs, min_batch
        self.fixed = cuda_graphs or min_batch >= self.rows
        self.slots: list[_GpuSlot] = []
        try:
            with ctx.current():
                for i in range(slots):
                    self._warm_up(i, self._add_slot())
        except BaseException:
            self.close()
            raise

    def _add_slot(self) -> _GpuSlot:
        """One execution context with its buffers bound by name (set_tensor_address), stream and event."""
        context = self.engine.create_execution_context()
        if context is None:
            msg = f"TensorRT could not create an execution context (GPU memory?): {self.logger.last_error}"
            raise BackendError(msg)
        slot = _GpuSlot(context, {}, {}, self.layer.stream())
        self.slots.append(slot)  # before allocating, so close() frees whatever a failure leaves
        for s in self.specs:
            slot.host[s.name] = self.layer.pinned(s.shape, s.dtype)
            slot.device[s.name] = self.layer.device(s.nbytes())
            slot.arrays[s.name] = slot.host[s.name].array
            if not context.set_tensor_address(s.name, slot.device[s.name].ptr):
                msg = f"TensorRT set_tensor_address({s.name!r}) failed: {self.logger.last_error}"
                raise BackendError(msg)
        return slot

    def _warm_up(self, index: int, s: _GpuSlot) -> None:
        """One plain run at the slot's fixed batch (TensorRT's lazy set-up happens there), then the graph capture.

        As trtexec: capture only after a plain enqueue of the same shape; a failed capture clears the error state
        and leaves the slot on plain enqueue. A lost device propagates (the load fails).
        """
        if not self.fixed:
            return
        s.arrays[INPUT_NAME][:] = 0
        self._run(s, self.rows)
        s.cuda.drain()
        if not self.cuda_graphs:
            return
        try:
            s.graph = self.layer.capture(s.cuda, lambda: self._run(s, self.rows))
        except DeviceLostError:
            raise
        except BackendError as exc:
            self.layer.clear_error()
            log.warning("cuda_graph_capture_failed", slot=index, batch=self.rows, error=str(exc),
                        fallback="plain enqueue")

    def input_buffer(self, slot: int) -> np.ndarray:
        """The slot's pinned input array."""
        return self.slots[slot].arrays[INPUT_NAME]

    def output_buffers(self, slot: int) -> dict[str, np.ndarray]:
        """The slot's pinned output arrays by name."""
        return {k: v for k, v in self.slots[slot].arrays.items() if k in OUTPUT_NAMES}

    def enqueue(self, slot: int, n: int) -> None:
        """Replay the slot's graph (or H2D, execute_async_v3, D2H), then record the slot's event. No sync."""
        s = self.slots[slot]
        s.recorded = False
        with self.ctx.current():
            if s.graph is not None:
                s.graph.launch(s.cuda)
            else:
                self._run(s, run_batch(n, rows=self.rows, min_batch=self.min_batch, fixed=self.fixed))
            s.cuda.record()
            s.recorded = True

    def _run(self, s: _GpuSlot, n: int) -> None:
        """Set the batch shape if it changed, then H2D copy, execute_async_v3, D2H copies on the slot's stream."""
        self.logger.last_error = ""  # so a failure below reports its own message, not an older one
        if s.shape_n != n:
            shape = (n, *self.image_tail)
            if not s.context.set_input_shape(INPUT_NAME, shape):
                msg = f"TensorRT set_input_shape({INPUT_NAME!r}, {shape}) failed: {self.logger.last_error}"
                raise BackendError(msg)
            s.shape_n = n
        s.cuda.htod(s.device[INPUT_NAME], s.arrays[INPUT_NAME][:n])
        if not s.context.execute_async_v3(s.cuda.handle):
            error = self.logger.last_error or "no message from TensorRT"
            msg = f"TensorRT execute_async_v3 failed: {error}"
            raise DeviceLostError(msg) if cm.is_fatal(error) else BackendError(msg)
        for name in OUTPUT_NAMES:
            s.cuda.dtoh(s.arrays[name][:n], s.device[name])

    def synchronize(self, slot: int) -> None:
        """Wait on the slot's event, or drain its stream when the submission failed before recording it."""
        s = self.slots[slot]
        with self.ctx.current():
            s.cuda.wait_event() if s.recorded else s.cuda.drain()

    def close(self, free: bool = True) -> None:
        """Graphs, execution contexts, engine, runtime, then buffers and streams, then the CUDA context.

        Never raises: a failed step is logged and the others still run. `free=False` (after a device loss) makes
        no CUDA call at all, since none can succeed on a lost context; the process exits next.
        """
        slots, self.slots = self.slots, []
        if not free:
            self.engine = self.runtime = None
            return
        try:
            with self.ctx.current():
                for s in slots:
                    if s.graph is not None:
                        _quietly("graph", s.graph.close)
                    s.context = None
                self.engine = self.runtime = None
                for s in slots:
                    owners: list[Any] = [*s.host.values(), *s.device.values(), s.cuda]
                    for owner in owners:
                        _quietly(type(owner).__name__, owner.close)
        except BackendError as exc:
            log.warning("cuda_teardown_failed", error=str(exc))
        finally:
            _quietly("context", self.ctx.close)


def _quietly(what: str, close: Any) -> None:
    """Run one teardown step; its failure is logged, not raised, so the remaining steps still run."""
    try:
        close()
    except BackendError as exc:
        log.warning("cuda_free_failed", what=what, error=str(exc))


def import_tensorrt(purpose: str = 'model.backend = "tensorrt"', error: type[InspectdError] = BackendError) -> Any:
    """Import TensorRT (10 or 11) for `purpose`, or raise `error` saying how to get it on this kind of box."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        msg = (f"{purpose} needs TensorRT and an NVIDIA GPU; TensorRT is not available here ({exc}): on a Jetson it "
               "comes with JetPack (python3-libnvinfer), on an x86 GPU box pip install 'inspectd[gpu]'")
        raise error(msg) from None
    if version_key(trt.__version__) < (10,):
        msg = f"TensorRT {trt.__version__} is too old: inspectd needs TensorRT 10 or 11 (JetPack 6)"
        raise error(msg)
    return trt


def load(bundle: Bundle, config: ModelConfig) -> RingBackend:
    """Check, deserialise and set up the bundle's engine (module entry point used by edge.backends.load_backend)."""
    trt = import_tensorrt()
    engine_file = check_engine_info(bundle, trt.__version__)
    layer = cm.load_layer(config.cuda)
    gpu = layer.device_info(0)
    check_engine_info(bundle, trt.__version__, gpu)
    ctx = layer.context(0)
    try:
        with ctx.current():
            logger = make_trt_logger(trt)
            runtime = trt.Runtime(logger)
            engine = runtime.deserialize_cuda_engine(bundle.file(engine_file).read_bytes())
            if engine is None:
                msg = f"bundle {bundle.path}: TensorRT could not load {engine_file} ({logger.last_error}); {REBUILD}"
                raise BundleError(msg)
            profile = profile_batch(engine)
            max_batch = effective_max_batch(config.max_batch, profile)
            specs = plan_buffers(engine, buffer_rows(max_batch, profile))
            check_contract(specs, bundle)
    except BaseException:
        _quietly("context", ctx.close)
        raise
    executor = TrtExecutor(layer, ctx, runtime, engine, logger, specs, slots=config.slots,
                           cuda_graphs=config.cuda_graphs, min_batch=profile[0])  # closes ctx if it fails
    spec = bundle.meta.input
    name = f"tensorrt:{bundle.meta.engine.precision if bundle.meta.engine else '?'}:{engine_file}"
    log.info("backend_loaded", backend=name, gpu=gpu.name, tensorrt=trt.__version__, cuda=layer.version(),
             max_batch=max_batch, runs_at=executor.rows if executor.fixed else "batch size", slots=config.slots,
             cuda_graphs=sum(s.graph is not None for s in executor.slots))
    return RingBackend(executor, name=name, max_batch=max_batch, input_shape=(spec.height, spec.width, 3),
                      slots=config.slots, model_file=engine_file)
