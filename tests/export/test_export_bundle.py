import json

import numpy as np
import onnx
import pytest
import torch

from edge.bundle import BUNDLE_JSON, load_bundle
from edge.contract import INPUT_NAME, THRESHOLD_INITIALIZERS
from edge.errors import BundleError
from export.build import PROVISIONAL_METHOD, ExportError, export_bundle
from export.graph import ExportWrapper, PostProcess
from export.parity import MAP_TOLERANCE, check_parity, synthetic_images
from export.runtime import run_model
from tests.export.tinydet import SIZE, TinyDetector, make_category, tiny_meta

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A tiny MVTec-style category (module-wide: it is only read)."""
    return make_category(tmp_path_factory.mktemp("cat") / "tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, category):
    """The tiny detector exported once for the module."""
    out = tmp_path_factory.mktemp("bundle") / "tiny-bundle"
    bundle, report = export_bundle(TinyDetector(), tiny_meta(str(category)), out, name="tiny")
    return bundle, report


class TestExportBundle:
    """export_bundle(): checkpoint to verified bundle."""

    def test_round_trip(self, exported):
        """A freshly exported bundle loads, verifies and carries the checkpoint's metadata."""
        bundle, _ = exported
        loaded = load_bundle(bundle.path)
        meta = loaded.meta
        assert meta.name == "tiny"
        assert meta.detector == "tiny" and meta.detector_params == {"kernel": 3}
        assert (meta.input.height, meta.input.width, meta.input.color_order) == (*SIZE, "BGR")
        assert meta.opset == 17
        assert meta.thresholds.method == PROVISIONAL_METHOD and not meta.thresholds.calibrated
        assert (meta.thresholds.offset, meta.thresholds.image, meta.thresholds.pixel) == (0.02, 0.2, 0.2)
        assert meta.training.images == 8 and len(meta.training.hash) == 64
        assert meta.metrics == {"image_auroc": 1.0}  # non-numeric metrics are dropped
        assert set(meta.files) == {"model.onnx"}
        assert loaded.short_hash == meta.files["model.onnx"][:12]

    def test_tampered_model_refused(self, exported, tmp_path):
        """Changing one byte of model.onnx makes load_bundle refuse the bundle, naming the file."""
        bundle, _ = exported
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("model.onnx", BUNDLE_JSON):
            (copy / name).write_bytes((bundle.path / name).read_bytes())
        data = bytearray((copy / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (copy / "model.onnx").write_bytes(bytes(data))
        with pytest.raises(BundleError, match="model.onnx has SHA-256"):
            load_bundle(copy)

    def test_parity_on_category_test_set(self, exported, category):
        """ONNX Runtime matches torch on the category's 16 test images: map within 1e-3, identical verdicts."""
        _, report = exported
        assert report.ok
        assert report.n_images == 8 and str(category) in report.source  # the tiny category has 8 test images
        assert report.max_map_diff <= MAP_TOLERANCE and report.verdict_mismatches == 0

    def test_graph_io_contract(self, exported):
        """Input is uint8 NHWC with a dynamic batch; outputs are score (B,), map (B,1,H,W) float and mask uint8."""
        bundle, _ = exported
        graph = onnx.load(str(bundle.onnx_path)).graph
        assert [i.name for i in graph.input] == [INPUT_NAME]
        dims = graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [*SIZE, 3]
        assert [o.name for o in graph.output] == ["score", "anomaly_map", "mask"]
        inits = {i.name for i in graph.initializer}
        assert set(THRESHOLD_INITIALIZERS.values()) <= inits  # equal image/pixel thresholds stay separate
        for batch in (1, 3):
            out = run_model(bundle.onnx_path, synthetic_images(batch, SIZE), batch=batch)
            assert out.score.shape == (batch,) and out.score.dtype == np.float32
            assert out.anomaly_map.shape == (batch, 1, *SIZE)
            assert out.mask.shape == (batch, 1, *SIZE) and out.mask.dtype == np.uint8

    def test_normalisation(self, exported):
        """Scores are (raw - offset) / (image - offset), and the mask is map >= the normalised pixel threshold."""
        bundle, _ = exported
        images = synthetic_images(4, SIZE)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()[:, [2, 1, 0]] / 255
        raw_score, raw_map = (t.detach().numpy() for t in TinyDetector()(x))
        out = run_model(bundle.onnx_path, images)
        np.testing.assert_allclose(out.score, (raw_score - 0.02) / 0.18, atol=1e-4)
        np.testing.assert_allclose(out.anomaly_map, (raw_map - 0.02) / 0.18, atol=1e-4)
        assert np.array_equal(out.mask, (out.anomaly_map >= 1.0).astype(np.uint8))

    def test_bad_thresholds_refused(self, tmp_path):
        """A checkpoint whose image threshold is not above the offset is refused before anything is written."""
        meta = tiny_meta(provisional={"offset": 0.5, "image": 0.5, "pixel": 0.5})
        with pytest.raises(ExportError, match="above offset"):
            export_bundle(TinyDetector(), meta, tmp_path / "b")
        assert not (tmp_path / "b" / BUNDLE_JSON).exists()

    def test_reexport_clears_old_flavours(self, exported, tmp_path, category):
        """Exporting over an old bundle removes its INT8 files, which belong to the old model."""
        out = tmp_path / "b"
        export_bundle(TinyDetector(), tiny_meta(str(category)), out)
        (out / "model_int8_cpu.onnx").write_bytes(b"old")
        bundle, _ = export_bundle(TinyDetector(), tiny_meta(str(category)), out)
        assert not (out / "model_int8_cpu.onnx").exists()
        assert set(json.loads((out / BUNDLE_JSON).read_text())["files"]) == {"model.onnx"}
        assert bundle.meta.files["model.onnx"]


class TestParity:
    """check_parity(): torch vs ONNX Runtime comparison."""

    def test_mismatch_detected(self, exported):
        """A graph whose thresholds differ from the torch wrapper's fails parity with the numbers in the message."""
        bundle, _ = exported
        other = ExportWrapper(TinyDetector(), PostProcess(0.0, 0.1, 0.1))
        report = check_parity(other, bundle.onnx_path, synthetic_images(16, SIZE), "synthetic")
        assert not report.ok
        assert report.max_map_diff > MAP_TOLERANCE
        assert "max |map diff|" in report.describe()


class TestExportWrapper:
    """ExportWrapper: the uint8 BGR input side of the graph."""

    def test_bgr_becomes_rgb(self):
        """A BGR uint8 NHWC image reaches the detector as RGB float NCHW in [0, 1]."""
        seen = {}

        class Probe(torch.nn.Module):
            def forward(self, x):
                seen["x"] = x
                return x.amax(dim=(1, 2, 3)), x[:, :1]

        image = np.zeros((1, 4, 4, 3), np.uint8)
        image[..., 0] = 255  # blue in BGR
        ExportWrapper(Probe(), PostProcess(0.0, 1.0, 1.0))(torch.from_numpy(image))
        x = seen["x"]
        assert x.shape == (1, 3, 4, 4) and x.dtype == torch.float32
        assert float(x[0, 2].min()) == 1.0 and float(x[0, :2].max()) == 0.0
