import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from calib import int8
from calib.cli import load_eval_set
from calib.int8 import FLAVOURS, make_flavours, stressed
from calib.qdq import block_of, prepare
from calib.thresholds import write_thresholds
from edge.bundle import Thresholds
from edge.evaluation.dataset import list_images, read_image
from export.build import export_bundle
from export.runtime import run_model
from export.trt_rules import check_trt_graph
from tests.bundles import read_thresholds
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


class TestQuantisedGraphs:
    """The Q/DQ graphs make_flavours writes."""

    def test_forms_and_fp32_parts(self, bundle_dir, good, category):
        """Each flavour has its Q/DQ form and keeps the FP32 parts, and bundle.json says what stayed FP32 and why.

        TensorRT: int8 zero points all 0; CPU: uint8 activations; only learned blocks carry Q/DQ; the input, its
        cast and the thresholds are untouched.
        """
        results = {r.target: r for r in make_flavours(bundle_dir, good, load_eval_set(category, SIZE), threads=1)}
        trt, cpu = (bundle_dir / FLAVOURS[t].file for t in ("tensorrt", "cpu"))
        zps = zero_points(trt)
        assert zps and all(z.dtype == np.int8 and not np.any(z) for z in zps)
        assert any(z.dtype == np.uint8 for z in zero_points(cpu))
        for path in (trt, cpu):
            assert read_thresholds(path) == pytest.approx(read_thresholds(bundle_dir / "model.onnx"))
            graph = onnx.load(str(path)).graph
            quantised = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
            fp32 = onnx.load(str(bundle_dir / "model.onnx")).graph  # a Q/DQ pair sits on a learned node's tensor
            learned = {t for n in fp32.node if block_of(n.name) == "/detector/mix" for t in (*n.input, *n.output)}
            assert quantised and quantised <= learned
            assert {n.op_type for n in graph.node if "image" in n.input} == {"Cast"}
        assert check_trt_graph(trt) == []  # the Q/DQ graph TensorRT parses keeps its rules (symmetric, uint8 at the edge)
        entry = results["cpu"].entry
        assert entry is not None and entry.calibration.startswith("MinMax") and entry.measured_on
        assert [p.nodes for p in entry.fp32][-1].startswith("input cast") and all(p.reason for p in entry.fp32)
        out_fp32, out_int8 = run_model(bundle_dir / "model.onnx", good[:4]), run_model(cpu, good[:4])
        assert out_int8.mask.dtype == np.uint8 and np.max(np.abs(out_fp32.score - out_int8.score)) < 0.5

    def test_prepare_keeps_thresholds_rewritable(self, bundle_dir, tmp_path):
        """prepare() folds constants but leaves the threshold initializers for `calibrate` to rewrite."""
        out = tmp_path / "prepared.onnx"
        prepare(bundle_dir / "model.onnx", out)
        assert read_thresholds(out) == pytest.approx(read_thresholds(bundle_dir / "model.onnx"))
        assert {i.name for i in onnx.load(str(out)).graph.input} == {"image"}
        write_thresholds(out, Thresholds(image=0.5, pixel=0.4, offset=0.1, method="test", calibrated=True))
        assert read_thresholds(out) == pytest.approx({"offset": 0.1, "image": 0.5, "pixel": 0.4})

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

    def test_gate_boundary(self):
        """Exactly 0.5 points passes even when the float difference of two AUROCs is a hair above it."""
        assert int8.within_gate({"image_auroc": 100 * (0.9633333333333334 - 0.9683333333333334), "pixel_auroc": 0.1})
        assert not int8.within_gate({"image_auroc": -0.51})

    def test_no_evaluation_set(self, bundle_dir, good):
        """Without labelled evaluation images no flavour is written, and the reason says what to pass."""
        (bundle_dir / "model_int8_trt.onnx").write_bytes(b"stale")
        results = make_flavours(bundle_dir, good, None, threads=1)
        assert all(r.entry is None and "--eval" in r.reason for r in results)
        assert not (bundle_dir / "model_int8_trt.onnx").exists()
