"""TensorRT's ONNX-parser rules, checked on the CPU: hand-made graphs for each rule, then the real export graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export.build import ExportError, export_bundle
from export.graph import ExportWrapper, PostProcess, export_onnx
from export.trt_rules import OPERATORS_LIST, SUPPORTED_OPS, check_trt_graph
from tests.export.tinydet import SIZE, TinyDetector, tiny_meta

U8, F32, BOOL = TensorProto.UINT8, TensorProto.FLOAT, TensorProto.BOOL


def graph(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    """A model from (name, dtype, shape) inputs/outputs; shapes use 'batch' for dim 0."""
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs], initializer=list(initializers)),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    return model


IMAGE = ("image", U8, ["batch", 4, 4, 3])
MASK = ("mask", U8, ["batch", 1, 4, 4])


def cast(src, dst, to, name=""):
    return helper.make_node("Cast", [src], [dst], to=to, name=name)


def cast_first(mask_nodes) -> onnx.ModelProto:
    """Image -> Cast -> Transpose -> ReduceMean (map) -> mask nodes; the good op order but for `mask_nodes`."""
    nodes = [
        cast("image", "f", F32, "cast_in"),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["map"], axes=[1], keepdims=1),
        helper.make_node("GreaterOrEqual", ["map", "half"], ["hit"]),
        *mask_nodes,
    ]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    return graph(nodes, [IMAGE], [("map", F32, ["batch", 1, 4, 4]), MASK], [half])


GOOD_MASK = [cast("hit", "hit_f", F32, "mask_f"), cast("hit_f", "mask", U8, "mask_u8")]


class TestUint8Rules:
    """UINT8 only at the boundary, and only through a Cast from float."""

    def test_cast_first_and_float_mask_passes(self):
        """The op order TensorRT takes: Cast the input first; mask = Cast(Cast(bool -> float) -> uint8)."""
        assert check_trt_graph(cast_first(GOOD_MASK)) == []

    def test_transpose_before_the_cast_is_refused(self):
        """NVIDIA/TensorRT#3985: a UINT8 input feeding a Transpose (the network ends with no outputs)."""
        nodes = [helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="permute"),
                 cast("t", "f", F32), helper.make_node("ReduceMean", ["f"], ["map"], axes=[1], keepdims=1)]
        problems = check_trt_graph(graph(nodes, [IMAGE], [("map", F32, ["batch", 1, 4, 4])]))
        assert any("Transpose node 'permute' reads the UINT8 input 'image'" in p for p in problems), problems

    def test_bool_to_uint8_cast_is_refused(self):
        """kUINT8 converts only from kFLOAT/kHALF: Cast(BOOL -> UINT8) is named."""
        problems = check_trt_graph(cast_first([cast("hit", "mask", U8, "mask_u8")]))
        assert problems == [
            "Cast node 'mask_u8' casts BOOL to UINT8 ('hit' -> 'mask'): TensorRT converts to UINT8 only from FLOAT "
            "or FLOAT16; cast bool -> float -> uint8"
        ]

    def test_int32_to_uint8_cast_is_refused(self):
        """Any other source type is refused too."""
        nodes = [cast("hit", "i", TensorProto.INT32, "to_int"), cast("i", "mask", U8, "mask_u8")]
        assert any("casts INT32 to UINT8" in p for p in check_trt_graph(cast_first(nodes)))

    def test_uint8_output_not_made_by_a_cast_is_refused(self):
        """A UINT8 output from another op (here an Identity of a uint8 tensor) is refused."""
        nodes = [cast("hit", "hit_f", F32), cast("hit_f", "m8", U8, "inner"),
                 helper.make_node("Identity", ["m8"], ["mask"], name="copy")]
        problems = check_trt_graph(cast_first(nodes))
        assert any("'inner' makes the UINT8 tensor 'm8' inside the graph" in p for p in problems), problems
        assert any("UINT8 output 'mask' is not made by a Cast" in p for p in problems), problems


class TestOperatorsAndShapes:
    """The supported-operator list, the domain, the opset, and the dynamic dims."""

    def test_the_list_is_named_and_plausible(self):
        """The list names its source; ops our graphs use are in it, ops TensorRT 10 lacks are not."""
        assert "10.1-GA" in OPERATORS_LIST
        assert {"Conv", "Cast", "Resize", "QuantizeLinear", "DequantizeLinear", "TopK", "Einsum"} <= SUPPORTED_OPS
        assert not {"Det", "Unique", "BitwiseAnd", "SequenceAt", "ConvInteger"} & SUPPORTED_OPS

    def test_unsupported_op_is_named(self):
        """An op outside the list is refused with the node's name and the list's version."""
        nodes = [cast("image", "f", F32), helper.make_node("Reshape", ["f", "shape"], ["sq"]),
                 helper.make_node("Det", ["sq"], ["d"], name="det")]
        shape = numpy_helper.from_array(np.array([-1, 4, 4], np.int64), "shape")
        problems = check_trt_graph(graph(nodes, [IMAGE], [("d", F32, ["batch"])], [shape]))
        assert problems == [f"Det node 'det': Det is not supported by TensorRT 10's ONNX parser ({OPERATORS_LIST})"]

    def test_custom_domain_is_refused(self):
        """ONNX Runtime contrib ops (com.microsoft) are not ONNX ops."""
        nodes = [cast("image", "f", F32), helper.make_node("Gelu", ["f"], ["g"], domain="com.microsoft", name="ms")]
        model = graph(nodes, [IMAGE], [("g", F32, ["batch", 4, 4, 3])])
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        assert any("'ms': domain 'com.microsoft'" in p for p in check_trt_graph(model))

    def test_opset_outside_the_range_is_refused(self):
        """TensorRT 10 parses opsets 9..20."""
        model = graph([cast("image", "f", F32)], [IMAGE], [("f", F32, ["batch", 4, 4, 3])], opset=21)
        assert [p.split(":")[0] for p in check_trt_graph(model)] == ["opset 21"]

    def test_only_the_batch_may_be_dynamic(self):
        """A symbolic height is refused; a symbolic batch is what the engine profile varies."""
        image = ("image", U8, ["batch", "h", 4, 3])
        problems = check_trt_graph(graph([cast("image", "f", F32)], [image], [("f", F32, ["batch", "h", 4, 3])]))
        assert any("input 'image' has dynamic dims 1" in p for p in problems), problems
        assert any("output 'f' has dynamic dims 1" in p for p in problems), problems

    def test_asymmetric_zero_point_is_refused(self):
        """Q/DQ with a non-zero zero point: TensorRT quantises symmetrically."""
        scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
        zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
        nodes = [cast("image", "f", F32), helper.make_node("QuantizeLinear", ["f", "s", "zp"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq")]
        problems = check_trt_graph(graph(nodes, [IMAGE], [("dq", F32, ["batch", 4, 4, 3])], [scale, zp]))
        assert sorted(p.split(":")[0] for p in problems) == ["DequantizeLinear node 'dq'", "QuantizeLinear node 'q'"]


class TestExportedGraph:
    """The graph `inspectd export` writes, through export/graph.py."""

    def test_export_graph_keeps_the_rules(self, tmp_path):
        """ExportWrapper casts the uint8 image before any layout op and makes the mask through float."""
        path = tmp_path / "model.onnx"
        wrapper = ExportWrapper(TinyDetector(), PostProcess(0.02, 0.2, 0.2)).eval()
        export_onnx(wrapper, path, *SIZE)
        assert check_trt_graph(path) == []
        assert not any(m.training for m in wrapper.modules()), "export left the detector in training mode"
        model = onnx.load(str(path))
        readers = [n.op_type for n in model.graph.node if "image" in n.input]
        assert readers == ["Cast"]

    def test_export_refuses_a_graph_tensorrt_cannot_parse(self, tmp_path):
        """`inspectd export` stops before writing a bundle whose graph breaks a rule, naming the node."""

        class DetDetector(TinyDetector):
            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                score, amap = super().forward(x)
                return score + 0.0 * torch.det(x[:, :2, :2, :2]).sum(dim=1), amap

        with pytest.raises(ExportError, match=r"TensorRT.*Det node '/detector/Det'"):
            export_bundle(DetDetector(), tiny_meta(), tmp_path / "b")
        assert not (tmp_path / "b" / "model.onnx").exists()


def test_paths_are_accepted(tmp_path: Path):
    """A path works as well as a ModelProto."""
    onnx.save(cast_first(GOOD_MASK), tmp_path / "m.onnx")
    assert check_trt_graph(tmp_path / "m.onnx") == check_trt_graph(str(tmp_path / "m.onnx")) == []
