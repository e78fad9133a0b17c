"""What TensorRT 10/11's ONNX parser accepts, checked on the CPU before a graph leaves the workstation.

No build machine has TensorRT, and a graph the parser half-accepts fails far from its cause: a UINT8 input that
feeds a Transpose leaves a network with no outputs (NVIDIA/TensorRT#3985), and `build_serialized_network` then
blames the workspace. These rules come from TensorRT's own sources, checked on release/10.3 to 11.1:

- UINT8 exists only at the network boundary (onnx-tensorrt operators.md: "UINT8 is only supported as network input
  or output tensor types"): a UINT8 input may feed only Cast nodes, a UINT8 output must be the Cast of a FLOAT or
  FLOAT16 tensor (`NvInferRuntimeBase.h`: kUINT8 converts only from/to kFLOAT and kHALF), so Cast(BOOL -> UINT8)
  is refused (#4278), and no UINT8 tensor may sit inside the graph.
- Every op is in onnx-tensorrt's supported-operator list for TensorRT 10 (`SUPPORTED_OPS`, from the list named in
  `OPERATORS_LIST`; later 10.x/11.x releases only add to it), in the default domain, at an opset it covers.
- Only the batch dimension (dim 0) of an input or output is dynamic: the engine's profile varies the batch only.
- Q/DQ (INT8): TensorRT takes symmetric quantisation only, zero points all zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

OPERATORS_LIST = "onnx-tensorrt docs/operators.md, branch 10.1-GA (commit 96e7811), for TensorRT 10.0/10.1"
OPSETS = range(9, 21)  # "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"
# Every operator marked Y in that list (the N rows, e.g. Det, BitwiseAnd, Unique, the Sequence ops, are left out).
SUPPORTED_OPS = frozenset(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
    Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND
    Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization
    LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow
    PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
    Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor""".split()
)
_FLOATS = {TensorProto.FLOAT: "FLOAT", TensorProto.FLOAT16: "FLOAT16"}
_ZERO_POINT = {"QuantizeLinear": 2, "DequantizeLinear": 2}  # input index of the zero point


def check_trt_graph(model: onnx.ModelProto | Path | str) -> list[str]:
    """One line per rule the graph breaks, each naming the node or tensor; [] when TensorRT's parser takes it."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    dtypes = _dtypes(graph)
    problems = _opset(model) + _operators(graph)
    problems += _uint8_boundary(graph, dtypes)
    problems += _dynamic_dims(graph)
    problems += _zero_points(graph)
    return problems


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} node {node.name or f'#{index}'!r}"


def _dtypes(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor shape inference could type (inputs, outputs, initializers, intermediates)."""
    found = {init.name: init.data_type for init in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            found[info.name] = info.type.tensor_type.elem_type
    return found


def _opset(model: onnx.ModelProto) -> list[str]:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version not in OPSETS:
        return [f"opset {version}: TensorRT 10 parses opsets {OPSETS.start}..{OPSETS.stop - 1} ({OPERATORS_LIST})"]
    return []


def _operators(graph: onnx.GraphProto, where: str = "") -> list[str]:
    """Ops outside the supported list or the default domain, subgraphs (If/Loop/Scan bodies) included."""
    problems = []
    for i, node in enumerate(graph.node):
        label = f"{where}{_label(node, i)}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: domain {node.domain!r} is not ONNX's own; TensorRT parses only ONNX ops")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{label}: {node.op_type} is not supported by TensorRT 10's ONNX parser ({OPERATORS_LIST})")
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                problems += _operators(sub, f"{label} > ")
    return problems


def _uint8_boundary(graph: onnx.GraphProto, dtypes: dict[str, int]) -> list[str]:
    """UINT8 only at the boundary: inputs feed Cast only; outputs are Cast(FLOAT|FLOAT16); nothing UINT8 inside."""
    problems = []
    inputs = {i.name for i in graph.input if dtypes.get(i.name) == TensorProto.UINT8}
    outputs = {o.name for o in graph.output if dtypes.get(o.name) == TensorProto.UINT8}
    producers = {}
    for i, node in enumerate(graph.node):
        for name in node.output:
            producers[name] = (i, node)
        for name in node.input:
            if name in inputs and node.op_type != "Cast":
                problems.append(f"{_label(node, i)} reads the UINT8 input {name!r}: TensorRT lets a UINT8 network "
                                "input feed only a Cast (cast it to float first, then transpose/reshape/slice)")
        produced_uint8 = [n for n in node.output if dtypes.get(n) == TensorProto.UINT8]
        if node.op_type != "Cast" or not produced_uint8:
            problems += [f"{_label(node, i)} makes the UINT8 tensor {n!r} inside the graph: TensorRT has UINT8 only "
                         "as network inputs and outputs (a Cast from float)" for n in produced_uint8 if n not in inputs]
            continue
        source = dtypes.get(node.input[0])
        if source == TensorProto.BOOL:
            problems.append(f"{_label(node, i)} casts BOOL to UINT8 ({node.input[0]!r} -> {node.output[0]!r}): "
                            "TensorRT converts to UINT8 only from FLOAT or FLOAT16; cast bool -> float -> uint8")
        elif source not in _FLOATS:
            kind = TensorProto.DataType.Name(source) if source else "an unknown type"
            problems.append(f"{_label(node, i)} casts {kind} to UINT8: TensorRT converts to UINT8 only from FLOAT "
                            "or FLOAT16")
        if node.output[0] not in outputs:
            problems.append(f"{_label(node, i)} makes the UINT8 tensor {node.output[0]!r} inside the graph: TensorRT "
                            "has UINT8 only as network inputs and outputs")
    for name in sorted(outputs):
        if name in inputs:
            problems.append(f"output {name!r} is the UINT8 input itself: TensorRT needs a Cast in between")
        elif name not in producers or producers[name][1].op_type != "Cast":
            problems.append(f"UINT8 output {name!r} is not made by a Cast: TensorRT makes UINT8 outputs only by "
                            "casting FLOAT or FLOAT16")
    return problems


def _dynamic_dims(graph: onnx.GraphProto) -> list[str]:
    """Inputs and outputs: dim 0 (the batch) may be symbolic, every other dim must be a fixed positive size."""
    problems = []
    for kind, infos in (("input", graph.input), ("output", graph.output)):
        for info in infos:
            if not info.type.tensor_type.HasField("shape"):
                problems.append(f"{kind} {info.name!r} has no shape: TensorRT needs every dim but the batch fixed")
                continue
            dims = info.type.tensor_type.shape.dim
            free = [str(i) for i, d in enumerate(dims) if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0)]
            if free:
                problems.append(f"{kind} {info.name!r} has dynamic dims {', '.join(free)} "
                                f"({[d.dim_param or d.dim_value for d in dims]}): only the batch (dim 0) may vary")
    return problems


def _zero_points(graph: onnx.GraphProto) -> list[str]:
    """Q/DQ zero points must be constant zeros: TensorRT quantises symmetrically."""
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    problems = []
    for i, node in enumerate(graph.node):
        k = _ZERO_POINT.get(node.op_type)
        if k is None or len(node.input) <= k or not node.input[k]:
            continue
        tensor = constants.get(node.input[k])
        if tensor is None:
            problems.append(f"{_label(node, i)}: zero point {node.input[k]!r} is not a constant; TensorRT needs 0")
        elif np.any(numpy_helper.to_array(tensor) != 0):
            problems.append(f"{_label(node, i)}: zero point {node.input[k]!r} is not 0; TensorRT takes symmetric "
                            "quantisation only (ActivationSymmetric/WeightSymmetric)")
    return problems
