"""Q/DQ graphs from ONNX Runtime's quantiser: graph preparation, the learned blocks, quantising a set of blocks.

Why each step (measured on a padim bundle, EfficientNet-Lite0, on an Intel Xeon with AVX-512 VNNI/AMX; README "INT8"):
- **Prepare first.** ONNX Runtime's basic graph optimisations (constant folding, Pad folded into Conv) run before
  quantisation, as its quantiser recommends. EfficientNet's "same" padding is an explicit Pad in front of every
  depthwise Conv; left in, each one becomes a float island (DequantizeLinear -> Pad -> QuantizeLinear) between two
  integer convolutions. The threshold initializers are made graph inputs for that pass, so folding cannot bake them
  into constants: `inspectd calibrate` rewrites them in every graph of a bundle.
- **Quantise blocks, not single nodes.** A node is kept FP32 only if no Q/DQ touches its activations: ONNX Runtime
  turns a float Conv whose input comes from a DequantizeLinear and whose output goes to a QuantizeLinear into an
  integer QLinearConv by itself (it quantises the weights on the fly). So the unit quantised or kept is a block, the
  nodes of one sub-module of the detector (`/detector/backbone/stages.0.1/...`), and every op inside a quantised
  block is quantised (Clip, Add, pooling too: no float islands left between its convolutions).
- **Layers of a Sequential.** A block that is an `nn.Sequential` (its children are `body.0`, `body.1`, ...: a PDN,
  an encoder) is split into layers, each weighted child with the weightless ones after it (Conv + ReLU + pool), so
  one sensitive convolution does not keep a whole network FP32 (EfficientAD's PDNs are one Sequential each).
- **Only learned blocks, and linear maps.** The detector's own arithmetic at its top level (a Mahalanobis distance,
  the Gaussian smoothing of the map, differences, quantile normalisation, the max, the thresholds) and the wrapper's
  pre/post-processing stay FP32: 8 bits there quantise the map itself, and a one-channel 33-tap smoothing kernel
  runs 10x slower as an integer convolution. The exception is a top-level `MatMul`/`Gemm` with a 2-D constant
  (PatchCore's memory bank, x . m of its nearest-neighbour distance): its inputs are quantised and its output stays
  float (ONNX Runtime: `MatMulIntegerToFloat`), so the arithmetic after it is FP32; it is a unit the search ranks
  like a block. A batched 3-D constant (PaDiM's per-patch inverse covariances) has no integer kernel in ONNX Runtime.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.contract import INPUT_NAME, THRESHOLD_INITIALIZERS

if TYPE_CHECKING:
    import onnx

DETECTOR_SCOPE = "detector"  # export wraps the detector module as `detector`: its node names start /detector/
BLOCK_DEPTH = 3  # /detector/<module>/<child>: e.g. /detector/backbone/stages.0.1 (an inverted-residual block)
IMAGE_CHANNELS = 3  # a weighted op reading at most this many channels reads the image (RGB or grey)
_FLOAT_COMPUTE = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm")


@dataclass(frozen=True)
class QuantSpec:
    """How one flavour quantises (ONNX Runtime QuantType / CalibrationMethod member names)."""

    activation: str
    weight: str
    symmetric: bool
    reduce_range: bool = False
    per_channel: bool = True
    method: str = "MinMax"


def prepare(fp32: Path, out: Path) -> None:
    """Write `fp32` with ONNX Runtime's basic optimisations applied, threshold initializers kept as initializers."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32))
    inits = {i.name: i for i in model.graph.initializer}
    kept = [n for n in THRESHOLD_INITIALIZERS.values() if n in inits]
    for name in kept:  # an initializer that is also a graph input may be overridden, so it is never folded
        model.graph.input.append(onnx.helper.make_tensor_value_info(name, inits[name].data_type, inits[name].dims))
    with tempfile.TemporaryDirectory(prefix="inspectd-qdq-") as tmp:
        staged, optimised = Path(tmp) / "in.onnx", Path(tmp) / "opt.onnx"
        onnx.save(model, str(staged))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        ort.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
        result = onnx.load(str(optimised))
    inputs = [i for i in result.graph.input if i.name not in kept]
    del result.graph.input[:]
    result.graph.input.extend(inputs)
    onnx.save(result, str(out))


def block_of(node_name: str) -> str | None:
    """The learned module a node belongs to, or None for wrapper and detector-level nodes.

    `/detector/<module>/<child>`, one level deeper for each Sequential item (`/detector/teacher/body/body.3`).
    """
    parts = node_name.split("/")
    modules = parts[1:-1]  # "/detector/backbone/stages.0.1/_expand_conv/Conv" -> detector, backbone, stages.0.1, ...
    if len(parts) < 3 or parts[0] or len(modules) < 2 or modules[0] != DETECTOR_SCOPE:
        return None
    depth = min(BLOCK_DEPTH, len(modules))
    while depth < len(modules) and _item_of(modules[depth - 1], modules[depth]) is not None:
        depth += 1
    return "/" + "/".join(modules[:depth])


def _item_of(parent: str, child: str) -> int | None:
    """The index of `child` in the Sequential `parent` (torch names its children `<parent>.<i>`), else None."""
    head, _, index = child.rpartition(".")
    return int(index) if head == parent and index.isdigit() else None


def linear_map(node: onnx.NodeProto, weights: dict[str, tuple[int, ...]]) -> bool:
    """A detector-level MatMul/Gemm by a 2-D constant that does not read the image: quantisable, float output."""
    dims = weights.get(node.input[1]) if len(node.input) > 1 else None
    return (node.op_type in ("MatMul", "Gemm") and dims is not None and len(dims) == 2 and dims[0] > IMAGE_CHANNELS
            and node.name.startswith(f"/{DETECTOR_SCOPE}/") and node.name.count("/") == 2)


def learned_blocks(model: onnx.ModelProto) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(unit name -> its node names in graph order, for the units worth quantising; skipped unit -> why).

    Units are blocks (Sequential items grouped into layers, see the module docstring) and detector-level linear maps.
    Two kinds of block stay FP32 whatever the search says, because INT8 only costs there (measured on padim:
    keeping both FP32 made the CPU flavour 1.57-2.08x faster than FP32 instead of 1.45-1.70x): a block without
    weights (e.g. a backbone's input normalisation: Q/DQ around elementwise ops, no integer kernel) and a block whose
    convolutions read at most 3 channels (the image, or a one-channel map being smoothed: a reduction of 27 values
    per output is too short for integer GEMM kernels, and it would quantise the full-resolution input).
    """
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    blocks: dict[str, list[str]] = {}
    reads: dict[str, list[int]] = {}  # block -> input channels of each weighted op
    for node in model.graph.node:
        block = block_of(node.name)
        if block is None:
            if linear_map(node, weights):
                blocks[node.name] = [node.name]
                reads[node.name] = [weights[node.input[1]][0]]
            continue
        blocks.setdefault(block, []).append(node.name)
        dims = weights.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and dims and len(dims) == 4:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            reads.setdefault(block, []).append(dims[1] * group)
        elif node.op_type in ("MatMul", "Gemm") and dims:
            reads.setdefault(block, []).append(dims[0])
    blocks = _layers(blocks, reads)
    skipped = {}
    for block in list(blocks):
        channels = reads.get(block, [])
        if not channels:
            skipped[block] = "no weights: quantising it would add Q/DQ and no integer kernel"
        elif max(channels) <= IMAGE_CHANNELS:
            skipped[block] = (f"its convolutions read {max(channels)} channel(s) (the image or a map): integer kernels "
                              "are slower than FP32 there and it would quantise a full-resolution input")
        if block in skipped:
            del blocks[block]
    return blocks, skipped


def _layers(blocks: dict[str, list[str]], reads: dict[str, list[int]]) -> dict[str, list[str]]:
    """Merge each weightless Sequential item into the weighted item before it (Conv -> ReLU -> pool = one layer).

    `blocks` is in graph order, so a Sequential's items come in index order.
    """
    merged: dict[str, list[str]] = {}
    layer: dict[str, str] = {}  # Sequential -> its last weighted item so far
    for name, nodes in blocks.items():
        parent, _, child = name.rpartition("/")
        item = _item_of(parent.rpartition("/")[2], child) is not None
        if item and name not in reads and parent in layer:
            merged[layer[parent]].extend(nodes)
            continue
        merged[name] = list(nodes)
        if item and name in reads:
            layer[parent] = name
    return merged


def quantise_blocks(
    prepared: Path,
    out: Path,
    calibration: np.ndarray,
    spec: QuantSpec,
    nodes: Sequence[str],
    cache: Path,
) -> None:
    """Write the Q/DQ graph with exactly `nodes` quantised (every op type), calibrated on `calibration` images.

    Activation ranges are computed once per `cache` file (ONNX Runtime's calibration cache) and reused by every
    later call with another node set, which is what makes a block-by-block sensitivity search affordable.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray) -> None:
            self._it: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._it, None)
            return None if image is None else {INPUT_NAME: np.ascontiguousarray(image[None])}

    extra: dict[str, object] = {"ActivationSymmetric": True, "WeightSymmetric": True} if spec.symmetric else {}
    if spec.method == "Percentile":
        extra["CalibPercentile"] = 99.999
    root = logging.getLogger()
    root.addFilter(_drop_quantiser_chatter)
    try:
        quantize_static(
            str(prepared),
            str(out),
            None if cache.is_file() else _Reader(calibration),
            quant_format=QuantFormat.QDQ,
            nodes_to_quantize=list(nodes),
            per_channel=spec.per_channel,
            reduce_range=spec.reduce_range,
            activation_type=getattr(QuantType, spec.activation),
            weight_type=getattr(QuantType, spec.weight),
            calibrate_method=getattr(CalibrationMethod, spec.method),
            extra_options=extra,
            calibration_cache_path=str(cache),
        )
    finally:
        root.removeFilter(_drop_quantiser_chatter)
    maps = [n for n in nodes if block_of(n) is None]
    if maps:
        _float_outputs(out, maps)


def _float_outputs(path: Path, names: Sequence[str]) -> None:
    """Drop the Q/DQ pair the quantiser put on the outputs of `names`: the FP32 arithmetic after them reads floats.

    ONNX Runtime then runs DequantizeLinear -> MatMul as one integer MatMulIntegerToFloat; TensorRT fuses the same.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    outputs = {o for n in graph.node if n.name in set(names) for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    rewire: dict[str, str] = {}
    dropped: list[onnx.NodeProto] = []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in outputs:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        dropped += [q, *dqs]
        rewire.update({d.output[0]: q.input[0] for d in dqs})
    if not dropped:
        return
    for node in graph.node:
        node.input[:] = [rewire.get(t, t) for t in node.input]
    for out in graph.output:
        if out.name in rewire:
            msg = f"{path.name}: a graph output ({out.name}) is the output of a quantised linear map"
            raise RuntimeError(msg)
    gone = {n.name for n in dropped}
    kept = [n for n in graph.node if n.name not in gone]
    del graph.node[:]
    graph.node.extend(kept)
    used = {t for n in graph.node for t in n.input}
    inits = [i for i in graph.initializer if i.name in used]  # the dropped pair's scale and zero point
    del graph.initializer[:]
    graph.initializer.extend(inits)
    onnx.save(model, str(path))


def fp32_ops(path: Path, nodes: Sequence[str]) -> list[str]:
    """Those of `nodes` that ONNX Runtime's optimised CPU graph still runs as float Conv/MatMul/Gemm.

    The check that a "kept FP32" block really is: nodes fused into QLinearConv & co. disappear under their names.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="inspectd-qdq-") as tmp:
        optimised = Path(tmp) / "opt.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # Q/DQ fusion, no layout
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimised), load_external_data=False).graph
    wanted = set(nodes)
    return [n.name for n in graph.node if n.name in wanted and n.op_type in _FLOAT_COMPUTE]


def _drop_quantiser_chatter(record: logging.LogRecord) -> bool:
    """ONNX Runtime's quantiser logs a hint to pre-process the model on the root logger: `prepare` did that."""
    return "pre-processing" not in str(record.msg)
