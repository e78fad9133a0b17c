"""`inspectd export --engine`: build a TensorRT engine from a bundle's ONNX graph, on the GPU box that will run it.

Linear like TensorRT's own build samples: pick the graph and network flags for the precision, parse the ONNX file
(every parser error reported), check the input, set workspace, batch profile and timing cache, build, write the
engine into the bundle and record TensorRT version, GPU, compute capability, batch profile and precision in
bundle.json (re-hashed). TensorRT 10/11 API: no EXPLICIT_BATCH flag; a strongly typed network where the flag
exists (it is always on in 11), because precision belongs to the graph there:

- fp32: model.onnx.
- fp16: TensorRT <= 10.x builds model.onnx with BuilderFlag.FP16 on a weakly typed network (the flag is refused on
  a strongly typed one). TensorRT 11 removed the flag: it needs an FP16 graph, so `model_fp16.onnx` is made once
  with ONNX Runtime's float16 converter (uint8 input and float32 outputs kept) and stored in the bundle.
- int8: only the bundle's symmetric Q/DQ graph for TensorRT (`inspectd calibrate` writes it); implicit INT8
  calibration does not exist in TensorRT 11.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends import cuda_mem as cm
from edge.backends.trt import NP_DTYPES, enum_name, import_tensorrt, make_trt_logger, version_key
from edge.bundle import BundleMeta, EngineInfo, load_bundle, write_bundle
from edge.contract import INPUT_NAME, check_io
from edge.errors import BackendError, BundleError, MissingExtraError
from edge.log import get_logger

log = get_logger(__name__)
ENGINE_FILE = "model.engine"
FP16_GRAPH = "model_fp16.onnx"
PRECISIONS = ("fp16", "int8", "fp32")
MAX_BATCH_LIMIT = 64  # model.max_batch's upper bound


Shapes = tuple[tuple[int, ...], ...]


def profile_shapes(height: int, width: int, max_batch: int, opt_batch: int | None = None) -> Shapes:
    """(min, opt, max) shapes of the NHWC image input: batch 1 .. max_batch, tuned for opt_batch (default max)."""
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= max_batch <= MAX_BATCH_LIMIT:
        msg = f"--max-batch must be 1..{MAX_BATCH_LIMIT}, got {max_batch}"
        raise ValueError(msg)
    if not 1 <= opt <= max_batch:
        msg = f"opt batch must be 1..max batch ({max_batch}), got {opt}"
        raise ValueError(msg)
    return tuple((b, height, width, 3) for b in (1, opt, max_batch))


@dataclass(frozen=True)
class BuildPlan:
    """Which graph to parse and how, for one precision on one TensorRT version."""

    onnx_file: str
    strongly_typed: bool
    builder_flags: tuple[str, ...] = ()
    make_fp16_graph: bool = False
    why: str = ""


def plan_build(meta: BundleMeta, precision: str, trt_version: str, *, has_fp16_flag: bool,
               has_strongly_typed: bool) -> BuildPlan:
    """Choose graph, network typing and builder flags (pure: the TensorRT capabilities are passed in).

    Raises:
        BackendError: TensorRT older than 10.
        BundleError: int8 asked but the bundle has no TensorRT Q/DQ graph.
        ValueError: unknown precision.
    """
    if version_key(trt_version) < (10,):
        msg = f"TensorRT {trt_version} is too old: inspectd builds engines with TensorRT 10 or 11"
        raise BackendError(msg)
    if precision == "fp32":
        return BuildPlan("model.onnx", has_strongly_typed, why="FP32 graph")
    if precision == "int8":
        flavour = next((f for f in meta.int8 if f.target == "tensorrt"), None)
        if flavour is None or flavour.file not in meta.files:
            msg = ("--precision int8 needs the bundle's symmetric Q/DQ graph for TensorRT (model_int8_trt.onnx, "
                   "listed in bundle.json); run `inspectd calibrate` with INT8 first, or use --precision fp16")
            raise BundleError(msg)
        flags = () if has_strongly_typed else ("INT8",)
        return BuildPlan(flavour.file, has_strongly_typed, flags, why=f"explicit quantisation ({flavour.quant})")
    if precision == "fp16":
        if FP16_GRAPH in meta.files:
            return BuildPlan(FP16_GRAPH, has_strongly_typed, why="FP16 graph in the bundle")
        if has_fp16_flag:
            return BuildPlan("model.onnx", False, ("FP16",), why="FP32 graph with BuilderFlag.FP16 (TensorRT <= 10)")
        return BuildPlan(FP16_GRAPH, True, make_fp16_graph=True,
                         why="TensorRT >= 11 takes FP16 from the graph: model.onnx converted to FP16")
    msg = f"precision {precision!r} unknown, expected one of {PRECISIONS}"
    raise ValueError(msg)


def engine_info(precision: str, trt_version: str, gpu: cm.DeviceInfo, shapes: Shapes) -> EngineInfo:
    """The bundle.json record that lets the daemon refuse this engine on another TensorRT version or GPU."""
    lo, opt, hi = (s[0] for s in shapes)
    return EngineInfo.model_validate(
        {"file": ENGINE_FILE, "precision": precision, "tensorrt_version": trt_version, "gpu_name": gpu.name,
         "compute_capability": gpu.compute_capability, "min_batch": lo, "opt_batch": opt, "max_batch": hi}
    )


@dataclass(frozen=True)
class NetworkTensor:
    """One input or output of the parsed network, as TensorRT reports it."""

    name: str
    dtype: str  # TensorRT DataType name: FLOAT, HALF, UINT8, ...
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} {list(self.shape)}"


def network_tensors(network: Any) -> tuple[list[NetworkTensor], list[NetworkTensor]]:
    """(inputs, outputs) of a parsed INetworkDefinition."""
    def describe(t: Any) -> NetworkTensor:
        return NetworkTensor(t.name, enum_name(t.dtype), tuple(int(d) for d in t.shape))

    return ([describe(network.get_input(i)) for i in range(network.num_inputs)],
            [describe(network.get_output(i)) for i in range(network.num_outputs)])


def check_network(inputs: list[NetworkTensor], outputs: list[NetworkTensor], meta: BundleMeta, max_batch: int) -> str:
    """Refuse a parsed network that is not the bundle contract, before minutes of building; return its I/O line.

    The one input and every output by name, dtype and shape (edge/contract.py; float outputs may be HALF in an
    FP16 graph), and the batch dynamic if max_batch > 1. A parse can "succeed" with outputs missing: a UINT8 input
    feeding anything but a Cast leaves a network with no outputs (NVIDIA/TensorRT#3985).
    """
    spec = meta.input
    if not outputs:
        msg = ("TensorRT parsed the graph into a network with no outputs: the uint8 image must feed a Cast first "
               "(NVIDIA/TensorRT#3985); re-export the bundle with this inspectd, whose graphs keep TensorRT's rules")
        raise BundleError(msg)
    found = {t.name: (np.dtype(NP_DTYPES[t.dtype]) if t.dtype in NP_DTYPES else t.dtype, t.shape)
             for t in [*inputs, *outputs]}
    problem = check_io(found, spec.height, spec.width, half_floats=True) or (
        None if len(inputs) == 1 else f"{len(inputs)} inputs"
    )
    if problem:
        msg = (f"TensorRT's network is not the bundle contract at {spec.width}x{spec.height}: {problem} (inputs "
               f"{[str(t) for t in inputs]}, outputs {[str(t) for t in outputs]}); re-export the bundle")
        raise BundleError(msg)
    image = next(t for t in inputs if t.name == INPUT_NAME)
    if image.shape[0] >= 0 and image.shape[0] != max_batch:
        msg = (f"the graph's batch is fixed at {image.shape[0]}; export with a dynamic batch to build max batch "
               f"{max_batch}")
        raise BundleError(msg)
    return f"{image} -> {', '.join(str(t) for t in outputs)}"


def default_timing_cache(trt_version: str, gpu: cm.DeviceInfo) -> Path:
    """Per TensorRT version and GPU, outside the bundle (it is tuning data, not part of the model)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "inspectd" / f"tensorrt-{trt_version}-sm{gpu.compute_capability.replace('.', '')}.timing-cache"


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write via a temporary file in the same folder and rename: a crash never leaves half an engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_fp16_graph(bundle_dir: Path) -> Path:
    """model.onnx -> model_fp16.onnx with FP16 weights and math, keeping uint8 input and float32 outputs."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        msg = f"an FP16 engine on TensorRT 11 needs an FP16 graph, made with onnx ({exc}): pip install onnx"
        raise MissingExtraError(msg) from None
    model = convert_float_to_float16(onnx.load(str(bundle_dir / "model.onnx")), keep_io_types=True)
    out = bundle_dir / FP16_GRAPH
    write_atomic(out, model.SerializeToString())
    return out


def check_rules(onnx_path: Path) -> None:
    """TensorRT's parser rules on the graph about to be parsed (export/trt_rules.py), where onnx is installed.

    A graph that breaks them may parse into a network with outputs missing; this names the node instead. Without
    onnx (it comes with the train extra) the network check after parsing still catches the result.
    """
    try:
        from export.trt_rules import check_trt_graph
    except ImportError as exc:
        log.info("tensorrt_rules_not_checked", graph=onnx_path.name, reason=str(exc))
        return
    problems = check_trt_graph(onnx_path)
    if problems:
        msg = f"{onnx_path.name} breaks TensorRT's ONNX-parser rules: {'; '.join(problems)}; re-export the bundle"
        raise BundleError(msg)


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool) -> tuple[Any, Any]:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(flag) if strongly_typed and flag is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or logger.last_error
        msg = f"TensorRT cannot parse {onnx_path.name}: {errors}"
        raise BundleError(msg)
    return network, parser


def build_engine(bundle_dir: Path, *, precision: str = "fp16", max_batch: int = 1, opt_batch: int | None = None,
                 workspace_mb: int = 1024, timing_cache: Path | None = None, cuda: str = cm.DEFAULT_LAYER) -> Path:
    """Build `model.engine` for this box's GPU from the bundle in `bundle_dir`; returns the engine's path.

    `cuda` names the CUDA layer (model.cuda) that reads the GPU's name and compute capability for bundle.json.

    Raises:
        MissingExtraError: TensorRT is not installed (one line, no traceback from the CLI).
        BackendError: no NVIDIA driver/GPU, or TensorRT failed to build (its last error is in the message).
        BundleError: the bundle is invalid, lacks the graph the precision needs, or its graph does not parse.
    """
    if precision not in PRECISIONS:
        msg = f"precision {precision!r} unknown, expected one of {PRECISIONS}"
        raise ValueError(msg)
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    meta = bundle.meta
    shapes = profile_shapes(meta.input.height, meta.input.width, max_batch, opt_batch)
    trt = import_tensorrt("`inspectd export --engine`", MissingExtraError)  # run it on the GPU box
    gpu = cm.load_layer(cuda).device_info(0)
    plan = plan_build(meta, precision, trt.__version__, has_fp16_flag=hasattr(trt.BuilderFlag, "FP16"),
                      has_strongly_typed=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    if plan.make_fp16_graph:
        make_fp16_graph(bundle_dir)
    check_rules(bundle_dir / plan.onnx_file)
    log.info("engine_build_started", bundle=str(bundle_dir), precision=precision, graph=plan.onnx_file, why=plan.why,
             tensorrt=trt.__version__, gpu=gpu.name, compute_capability=gpu.compute_capability,
             batch_profile=[s[0] for s in shapes])
    logger = make_trt_logger(trt)
    try:
        builder = trt.Builder(logger)
    except (RuntimeError, TypeError) as exc:  # "CUDA initialization failure" on a box without a usable GPU
        builder, logger.last_error = None, str(exc)
    if builder is None:
        msg = f"TensorRT cannot create a builder on {gpu.name}: {logger.last_error or 'CUDA initialisation failed'}"
        raise BackendError(msg)
    network, _parser = _parse(trt, builder, logger, bundle_dir / plan.onnx_file, plan.strongly_typed)
    io = check_network(*network_tensors(network), meta, max_batch)
    log.info("engine_network_parsed", graph=plan.onnx_file, io=io)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(profile)
    cache_path = timing_cache or default_timing_cache(trt.__version__, gpu)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing_cache_ignored", path=str(cache_path), reason="built by another TensorRT or GPU")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        msg = (f"TensorRT could not build the engine: {logger.last_error or 'no error message'} "
               f"(a larger --workspace than {workspace_mb} MB may help)")
        raise BackendError(msg)
    engine_path = bundle_dir / ENGINE_FILE
    write_atomic(engine_path, memoryview(serialized))
    write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
    write_bundle(bundle_dir, meta.model_copy(update={"engine": engine_info(precision, trt.__version__, gpu, shapes)}))
    log.info("engine_built", engine=str(engine_path), bytes=engine_path.stat().st_size, timing_cache=str(cache_path))
    return engine_path
