import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calib import int8
from calib.cli import load_eval_set
from calib.int8 import FLAVOURS, make_flavours, quantise, stressed
from calib.thresholds import read_thresholds
from edge.evaluation.dataset import list_images, read_image
from export.build import export_bundle
from export.runtime import run_model
from tests.export.tinydet import SIZE, TinyDetector, make_category, tiny_meta


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A tiny MVTec-style category (module-wide: it is only read)."""
    return make_category(tmp_path_factory.mktemp("cat") / "tiny")


@pytest.fixture(scope="module")
def good(category):
    """The category's held-out good images at the model size."""
    return np.stack([read_image(p, SIZE) for p in list_images(category / "good")])


@pytest.fixture
def bundle_dir(tmp_path, category):
    """A fresh tiny bundle per test (calibration rewrites it)."""
    bundle, _ = export_bundle(TinyDetector(), tiny_meta(str(category)), tmp_path / "bundle")
    return bundle.path


def zero_points(path):
    """Zero-point initializers of every QuantizeLinear node."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


class TestQuantise:
    """quantise(): the Q/DQ graph each flavour writes."""

    def test_tensorrt_flavour_symmetric(self, bundle_dir, good, tmp_path):
        """The TensorRT flavour is Q/DQ with int8 zero points that are all 0, and keeps the thresholds FP32."""
        out = tmp_path / "trt.onnx"
        quantise(bundle_dir / "model.onnx", out, good, FLAVOURS["tensorrt"])
        zps = zero_points(out)
        assert zps and all(z.dtype == np.int8 and not np.any(z) for z in zps)
        assert read_thresholds(out) == pytest.approx(read_thresholds(bundle_dir / "model.onnx"))

    def test_cpu_flavour_u8s8(self, bundle_dir, good, tmp_path):
        """The CPU flavour quantises activations to uint8."""
        out = tmp_path / "cpu.onnx"
        quantise(bundle_dir / "model.onnx", out, good, FLAVOURS["cpu"])
        assert any(z.dtype == np.uint8 for z in zero_points(out))

    def test_pre_and_post_stay_fp32(self, bundle_dir, good, tmp_path):
        """Only Conv/MatMul/Gemm inputs are quantised: the uint8 input, its cast and the comparisons are untouched."""
        out = tmp_path / "trt.onnx"
        quantise(bundle_dir / "model.onnx", out, good, FLAVOURS["tensorrt"])
        fp32 = onnx.load(str(bundle_dir / "model.onnx")).graph
        allowed = {t for n in fp32.node if n.op_type in {"Conv", "MatMul", "Gemm"} for t in (*n.input, *n.output)}
        graph = onnx.load(str(out)).graph
        quantised = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
        assert quantised and quantised <= allowed
        assert {n.op_type for n in graph.node if "image" in n.input} == {"Transpose"}
        out_fp32 = run_model(bundle_dir / "model.onnx", good[:4])
        out_int8 = run_model(out, good[:4])
        assert out_int8.mask.dtype == np.uint8
        assert np.max(np.abs(out_fp32.score - out_int8.score)) < 0.5

    def test_stressed_images_differ(self, good):
        """Stressed calibration images are copies with one altered patch each, the originals unchanged."""
        before = good.copy()
        out = stressed(good[:4])
        assert np.array_equal(good, before)
        assert all(np.any(a != b) for a, b in zip(out, good[:4], strict=False))


class TestMakeFlavours:
    """make_flavours(): accuracy gate, latency and refusal reasons."""

    def test_gate_passes(self, bundle_dir, good, category):
        """On the tiny category both flavours keep AUROC within 0.5 points and get latencies recorded."""
        evaluation = load_eval_set(category, SIZE)
        results = make_flavours(bundle_dir, good, evaluation, threads=1)
        assert [r.target for r in results] == ["tensorrt", "cpu"]
        for r in results:
            assert r.entry is not None, r.reason
            assert r.entry.file == FLAVOURS[r.target].file and (bundle_dir / r.entry.file).is_file()
            assert abs(r.entry.image_auroc_delta) <= 0.5 and abs(r.entry.pixel_auroc_delta) <= 0.5
            assert r.entry.fp32_ms > 0 and r.entry.int8_ms > 0 and isinstance(r.entry.faster, bool)

    def test_gate_refuses(self, bundle_dir, good, category, monkeypatch):
        """A flavour outside the gate is not written and the reason gives the AUROC numbers."""
        monkeypatch.setattr(int8, "GATE_POINTS", -1.0)  # nothing can pass
        results = make_flavours(bundle_dir, good, load_eval_set(category, SIZE), targets=("cpu",), threads=1)
        assert results[0].entry is None
        assert "accuracy gate failed" in results[0].reason and "image_auroc" in results[0].reason
        assert not (bundle_dir / "model_int8_cpu.onnx").exists()

    def test_no_evaluation_set(self, bundle_dir, good):
        """Without labelled evaluation images no flavour is written, and the reason says what to pass."""
        (bundle_dir / "model_int8_trt.onnx").write_bytes(b"stale")
        results = make_flavours(bundle_dir, good, None, threads=1)
        assert all(r.entry is None and "--eval" in r.reason for r in results)
        assert not (bundle_dir / "model_int8_trt.onnx").exists()


class TestKeepFp32:
    """_keep_fp32(): which Conv/MatMul/Gemm nodes stay in float."""

    @pytest.mark.parametrize(
        ("name", "op", "b_dims", "kept"),
        [
            ("/detector/backbone/conv/Conv", "Conv", 4, False),  # learned conv: quantised
            ("/detector/smooth/Conv", "Conv", 4, True),  # fixed Gaussian kernel
            ("/detector/ssim/blur/Conv", "Conv", 4, True),  # SSIM window
            ("/detector/head/MatMul", "MatMul", 2, False),  # linear layer
            ("/detector/MatMul", "MatMul", 3, True),  # per-patch inverse covariance (PaDiM)
            ("/detector/Gemm", "Gemm", None, True),  # activation x activation
        ],
    )
    def test_rules(self, name, op, b_dims, kept):
        """Learned layers are quantised; smoothing, SSIM and distance products are not."""
        node = onnx.helper.make_node(op, ["a", "b"], ["y"], name=name)
        weights = {} if b_dims is None else {"b": b_dims}
        assert int8._keep_fp32(node, weights) is kept
