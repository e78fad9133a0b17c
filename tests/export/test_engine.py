"""`inspectd export --engine`: the pure parts of the TensorRT build (profile, plan, metadata, checks) on CPU.

The build itself needs TensorRT and a GPU: tests/edge/backends/test_trt.py::TestOnGpu builds and runs one there.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.backends import cuda_mem as cm
from edge.backends.trt import check_engine_info
from edge.bundle import Int8Flavour, load_bundle, write_bundle
from edge.errors import BackendError, BundleError, MissingExtraError
from export.engine import (
    ENGINE_FILE,
    FP16_GRAPH,
    NetworkTensor,
    build_engine,
    check_network,
    check_rules,
    default_timing_cache,
    engine_info,
    make_fp16_graph,
    plan_build,
    profile_shapes,
    write_atomic,
)
from export.trt_rules import check_trt_graph
from tests.bundles import blob_frame, make_tiny_bundle

H, W = 32, 48
GPU = cm.DeviceInfo(0, "NVIDIA Jetson AGX Orin", "8.7", 32 << 30, "12.2")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bundle(tmp_path):
    """A tiny bundle of H x W."""
    return make_tiny_bundle(tmp_path / "b", height=H, width=W)


def with_files(bundle, **extra_files: bytes):
    """The bundle with extra files written and listed (hashed) in bundle.json."""
    for name, data in extra_files.items():
        (bundle.path / name).write_bytes(data)
    return write_bundle(bundle.path, bundle.meta)


class TestProfileShapes:
    """The optimisation profile of the image input."""

    def test_default_opt_is_max(self):
        """Batch 1 .. max, tuned for the max batch unless told otherwise; NHWC at the bundle's size."""
        assert profile_shapes(H, W, 4) == ((1, H, W, 3), (4, H, W, 3), (4, H, W, 3))
        assert profile_shapes(H, W, 8, 2)[1] == (2, H, W, 3)

    @pytest.mark.parametrize(
        ("max_batch", "opt", "match"),
        [
            (0, None, r"--max-batch must be 1\.\.64"),  # no batch at all
            (65, None, r"--max-batch must be 1\.\.64"),  # above model.max_batch's range
            (4, 5, r"opt batch must be 1\.\.max batch \(4\)"),  # opt above max
            (4, 0, r"opt batch must be"),  # opt below 1
        ],
    )
    def test_bad_batches_are_refused(self, max_batch, opt, match):
        """Batch sizes outside 1..64 or an opt outside 1..max are refused with the rule."""
        with pytest.raises(ValueError, match=match):
            profile_shapes(H, W, max_batch, opt)


class TestPlanBuild:
    """Graph, network typing and builder flags per precision and TensorRT version."""

    def test_fp16_on_tensorrt_10_uses_the_builder_flag(self, bundle):
        """TensorRT 10: FP32 graph, weakly typed network (FP16 flag is refused on strongly typed ones), FP16 flag."""
        plan = plan_build(bundle.meta, "fp16", "10.3.0", has_fp16_flag=True, has_strongly_typed=True)
        assert (plan.onnx_file, plan.strongly_typed, plan.builder_flags, plan.make_fp16_graph) == (
            "model.onnx", False, ("FP16",), False)

    def test_fp16_on_tensorrt_11_needs_an_fp16_graph(self, bundle):
        """TensorRT 11 has no FP16 flag: the plan converts the graph and builds it strongly typed."""
        plan = plan_build(bundle.meta, "fp16", "11.0.0", has_fp16_flag=False, has_strongly_typed=True)
        assert (plan.onnx_file, plan.strongly_typed, plan.builder_flags, plan.make_fp16_graph) == (
            FP16_GRAPH, True, (), True)

    def test_fp16_graph_in_the_bundle_is_used_as_is(self, bundle):
        """An FP16 graph already in the bundle (hash-listed) is built strongly typed, on any version."""
        bundle = with_files(bundle, **{FP16_GRAPH: b"fp16 graph"})
        for version, flag in (("10.3.0", True), ("11.2.0", False)):
            plan = plan_build(bundle.meta, "fp16", version, has_fp16_flag=flag, has_strongly_typed=True)
            assert (plan.onnx_file, plan.strongly_typed, plan.builder_flags, plan.make_fp16_graph) == (
                FP16_GRAPH, True, (), False)

    def test_fp32_is_strongly_typed_where_possible(self, bundle):
        """FP32 builds model.onnx, strongly typed so TensorRT keeps FP32 everywhere."""
        plan = plan_build(bundle.meta, "fp32", "10.0.1", has_fp16_flag=True, has_strongly_typed=True)
        assert (plan.onnx_file, plan.strongly_typed, plan.builder_flags) == ("model.onnx", True, ())

    def test_int8_uses_the_tensorrt_qdq_graph(self, bundle):
        """INT8 builds the bundle's Q/DQ flavour for TensorRT; no calibrator, no INT8 flag on a typed network."""
        bundle = with_files(bundle, **{"model_int8_trt.onnx": b"qdq", "model_int8_cpu.onnx": b"u8s8"})
        meta = bundle.meta.model_copy(update={"int8": [
            Int8Flavour(file="model_int8_cpu.onnx", target="cpu", quant="QDQ U8S8 reduce_range"),
            Int8Flavour(file="model_int8_trt.onnx", target="tensorrt", quant="QDQ S8S8 symmetric per-channel"),
        ]})
        plan = plan_build(meta, "int8", "11.0.0", has_fp16_flag=False, has_strongly_typed=True)
        assert (plan.onnx_file, plan.strongly_typed, plan.builder_flags) == ("model_int8_trt.onnx", True, ())
        assert "S8S8" in plan.why

    def test_int8_without_qdq_graph_says_to_calibrate(self, bundle):
        """No TensorRT Q/DQ flavour: refused, pointing at `inspectd calibrate`."""
        with pytest.raises(BundleError, match=r"model_int8_trt\.onnx.*inspectd calibrate"):
            plan_build(bundle.meta, "int8", "10.3.0", has_fp16_flag=True, has_strongly_typed=True)

    def test_tensorrt_8_is_refused(self, bundle):
        """TensorRT 8.x (JetPack 5) is not a target: the 10/11 API is all we use."""
        with pytest.raises(BackendError, match="TensorRT 8.6.2 is too old"):
            plan_build(bundle.meta, "fp16", "8.6.2", has_fp16_flag=True, has_strongly_typed=False)

    def test_unknown_precision(self, bundle):
        """A precision other than fp16/int8/fp32 is a caller bug."""
        with pytest.raises(ValueError, match="'bf16' unknown"):
            plan_build(bundle.meta, "bf16", "10.3.0", has_fp16_flag=True, has_strongly_typed=True)


class TestEngineInfo:
    """What the build records in bundle.json."""

    def test_record_round_trips_and_passes_the_runtime_check(self, bundle):
        """What the build records in bundle.json is what the daemon checks at load (same version and GPU)."""
        info = engine_info("fp16", "10.3.0.30", GPU, profile_shapes(H, W, 4, 2))
        assert (info.file, info.min_batch, info.opt_batch, info.max_batch) == (ENGINE_FILE, 1, 2, 4)
        (bundle.path / ENGINE_FILE).write_bytes(b"engine bytes")
        write_bundle(bundle.path, bundle.meta.model_copy(update={"engine": info}))
        loaded = load_bundle(bundle.path)
        assert loaded.meta.engine == info and ENGINE_FILE in loaded.meta.files
        assert check_engine_info(loaded, "10.3.0", GPU) == ENGINE_FILE
        with pytest.raises(BundleError, match="export --engine"):
            check_engine_info(loaded, "10.4.0", GPU)

    def test_tampered_engine_is_refused_by_the_hash_check(self, bundle):
        """The engine is hash-listed like every bundle file: a swapped engine fails load_bundle."""
        (bundle.path / ENGINE_FILE).write_bytes(b"engine bytes")
        write_bundle(bundle.path, bundle.meta.model_copy(update={"engine": engine_info(
            "fp16", "10.3.0", GPU, profile_shapes(H, W, 1))}))
        (bundle.path / ENGINE_FILE).write_bytes(b"another engine")
        with pytest.raises(BundleError, match="model.engine has SHA-256"):
            load_bundle(bundle.path)


def io(*tensors: tuple[str, str, tuple[int, ...]]) -> list[NetworkTensor]:
    return [NetworkTensor(*t) for t in tensors]


IMAGE = ("image", "UINT8", (-1, H, W, 3))
OUTPUTS = [("score", "FLOAT", (-1,)), ("anomaly_map", "FLOAT", (-1, 1, H, W)), ("mask", "UINT8", (-1, 1, H, W))]


class TestCheckNetwork:
    """The parsed network's inputs and outputs against bundle.json, before minutes of building."""

    def test_contract_network_passes_and_is_described(self, bundle):
        """One uint8 NHWC `image` in, score/map/mask out: accepted, and the I/O line the build logs says so."""
        line = check_network(io(IMAGE), io(*OUTPUTS), bundle.meta, max_batch=4)
        assert line == (f"image UINT8 [-1, {H}, {W}, 3] -> score FLOAT [-1], anomaly_map FLOAT [-1, 1, {H}, {W}], "
                        f"mask UINT8 [-1, 1, {H}, {W}]")

    def test_half_outputs_of_an_fp16_graph_pass(self, bundle):
        """An FP16 graph may give HALF score and map."""
        outputs = [("score", "HALF", (-1,)), ("anomaly_map", "HALF", (-1, 1, H, W)), OUTPUTS[2]]
        assert "anomaly_map HALF" in check_network(io(IMAGE), io(*outputs), bundle.meta, max_batch=1)

    @pytest.mark.parametrize(
        ("inputs", "match"),
        [
            ([("input", "UINT8", (-1, H, W, 3))], "tensor 'image' is missing"),  # renamed input
            ([("image", "UINT8", (-1, 3, H, W))], rf"'image' is uint8 \[3, {H}, {W}\], expected uint8 \[batch, {H}"),
            ([("image", "FLOAT", (-1, H, W, 3))], "'image' is float32"),  # float input
            ([IMAGE, ("extra", "FLOAT", (1,))], "2 inputs"),  # two inputs
            ([("image", "UINT8", (1, H, W, 3))], "batch is fixed at 1"),  # static batch, max 4 asked
        ],
    )
    def test_other_inputs_are_refused(self, bundle, inputs, match):
        """A graph whose input is not the bundle contract is refused."""
        with pytest.raises(BundleError, match=match):
            check_network(io(*inputs), io(*OUTPUTS), bundle.meta, max_batch=4)

    def test_network_without_outputs_names_the_cause(self, bundle):
        """TensorRT#3985: a Transpose before the uint8 Cast parses into a network with no outputs."""
        with pytest.raises(BundleError, match=r"no outputs: the uint8 image must feed a Cast first.*#3985"):
            check_network(io(IMAGE), [], bundle.meta, max_batch=4)

    @pytest.mark.parametrize(
        ("outputs", "match"),
        [
            (OUTPUTS[:2], "tensor 'mask' is missing"),
            ([OUTPUTS[0], OUTPUTS[1], ("mask", "BOOL", (-1, 1, H, W))], r"'mask' is bool .*expected uint8"),
            ([("score", "FLOAT", (-1, 1)), *OUTPUTS[1:]], r"'score' is float32 \[1\], expected float32 \[batch\]"),
            ([OUTPUTS[0], ("anomaly_map", "BF16", (-1, 1, H, W)), OUTPUTS[2]], "'anomaly_map' is BF16"),
        ],
    )
    def test_outputs_must_be_the_contract(self, bundle, outputs, match):
        """Outputs are checked by name, dtype and rank, and the message says what is wrong."""
        with pytest.raises(BundleError, match=match):
            check_network(io(IMAGE), io(*outputs), bundle.meta, max_batch=4)

    def test_graph_breaking_the_rules_is_refused_before_parsing(self, tmp_path):
        """check_rules names the node of a graph TensorRT would half-parse (onnx is installed here)."""
        path = tmp_path / "old.onnx"
        image = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, ["batch", H, W, 3])
        out = onnx.helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, ["batch", 3, H, W])
        nodes = [onnx.helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="permute"),
                 onnx.helper.make_node("Cast", ["t"], ["f"], to=onnx.TensorProto.FLOAT)]
        model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [image], [out]),
                                       opset_imports=[onnx.helper.make_opsetid("", 17)])
        onnx.save(model, path)
        with pytest.raises(BundleError, match="old.onnx breaks TensorRT's ONNX-parser rules: Transpose node 'permute'"):
            check_rules(path)
        check_rules(make_tiny_bundle(tmp_path / "b", height=H, width=W).onnx_path)  # today's export keeps them


class TestFiles:
    """Where the build writes."""

    def test_default_timing_cache_is_per_version_and_gpu(self, tmp_path, monkeypatch):
        """The timing cache lives in the user's cache folder, named by TensorRT version and SM."""
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert default_timing_cache("10.3.0", GPU) == tmp_path / "inspectd" / "tensorrt-10.3.0-sm87.timing-cache"

    def test_write_atomic_leaves_no_temporary_file(self, tmp_path):
        """The file appears complete under its name; nothing else is left in the folder."""
        write_atomic(tmp_path / "sub" / "model.engine", memoryview(b"abc"))
        assert [p.name for p in (tmp_path / "sub").iterdir()] == ["model.engine"]
        assert (tmp_path / "sub" / "model.engine").read_bytes() == b"abc"


class TestFp16Graph:
    """The FP16 graph TensorRT 11 needs."""

    def test_conversion_keeps_io_and_matches(self, bundle):
        """The FP16 graph for TensorRT 11 keeps uint8 input and float32 outputs and gives the same verdicts."""
        path = make_fp16_graph(bundle.path)
        model = onnx.load(str(path))
        assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        assert outs == {"score": onnx.TensorProto.FLOAT, "anomaly_map": onnx.TensorProto.FLOAT,
                        "mask": onnx.TensorProto.UINT8}
        assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
        assert check_trt_graph(model) == []  # uint8 still only at the edges, through Casts from FLOAT16
        images = np.stack([blob_frame(H, W), blob_frame(H, W, (4, 4, 8, 8))])
        fp16 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})
        session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
        fp32 = session.run(None, {"image": images})
        np.testing.assert_allclose(fp16[1], fp32[1], atol=2e-3)
        np.testing.assert_array_equal(fp16[0] >= 1.0, fp32[0] >= 1.0)


class TestBuildEngineHere:
    """build_engine on this GPU-less box."""

    @pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
    def test_without_tensorrt_one_line_explanation(self, bundle):
        """On a box without TensorRT the build stops with one line saying what is missing and where to run it."""
        with pytest.raises(MissingExtraError) as info:
            build_engine(bundle.path, precision="fp16", max_batch=2)
        assert "needs TensorRT and an NVIDIA GPU" in str(info.value) and "\n" not in str(info.value)
        assert not (bundle.path / ENGINE_FILE).exists()

    def test_bad_arguments_fail_before_tensorrt(self, bundle):
        """An unknown precision or batch is reported even where TensorRT is missing."""
        with pytest.raises(ValueError, match="'fp8' unknown"):
            build_engine(bundle.path, precision="fp8")
        with pytest.raises(ValueError, match="--max-batch"):
            build_engine(bundle.path, max_batch=0)

    def test_tampered_bundle_is_refused_first(self, bundle):
        """The bundle's hashes are checked before anything is built."""
        (bundle.path / "model.onnx").write_bytes(b"not the model")
        with pytest.raises(BundleError, match="SHA-256"):
            build_engine(bundle.path)


class TestGpuModules:
    """The GPU path's modules, for both CUDA layers, where neither TensorRT nor a GPU exists.

    mypy checks them in `make test`'s lint step, against cuda-python's real API (installed by the dev extra).
    """

    FILES = ["edge/backends/trt.py", "edge/backends/cuda_mem.py", "edge/backends/cuda_rt.py",
             "edge/backends/cuda_pycuda.py", "edge/backends/ring.py", "export/engine.py", "export/trt_rules.py",
             "edge/tools/check.py"]

    def test_compile_and_import_without_their_libraries(self):
        """Compileall is clean, and each module imports without TensorRT, pycuda or a GPU (they load lazily)."""
        modules = [f[:-3].replace("/", ".") for f in self.FILES]
        code = ("import compileall, importlib, sys; sys.modules['pycuda'] = None; sys.modules['tensorrt'] = None; "
                f"assert all(compileall.compile_file(f, quiet=1) for f in {self.FILES!r}); "
                f"[importlib.import_module(m) for m in {modules!r}]")
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
