import shutil

import cv2
import numpy as np
import pytest

from edge.bundle import EVIDENCE_PNG, load_bundle
from edge.cli import main
from edge.evaluation.dataset import list_images, read_image
from export.build import export_bundle
from export.runtime import run_model
from tests.bundles import read_thresholds
from tests.export.tinydet import SIZE, TinyDetector, make_category, tiny_meta


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A tiny MVTec-style category (module-wide: it is only read)."""
    return make_category(tmp_path_factory.mktemp("cat") / "tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, category):
    """The tiny detector exported once for the module."""
    # Provisional thresholds deliberately wrong: everything "fails" before calibration.
    meta = tiny_meta(str(category), provisional={"offset": 0.0, "image": 0.001, "pixel": 0.001})
    bundle, _ = export_bundle(TinyDetector(), meta, tmp_path_factory.mktemp("b") / "bundle")
    return bundle.path


@pytest.fixture
def bundle_dir(exported, tmp_path):
    """A fresh tiny bundle per test (calibration rewrites it)."""
    return shutil.copytree(exported, tmp_path / "bundle")


def scores(bundle_dir, folder):
    """Normalised scores of the bundle's graph on every image in `folder`."""
    images = np.stack([read_image(p, SIZE) for p in list_images(folder)])
    return run_model(bundle_dir / "model.onnx", images).score


class TestCalibrate:
    """`inspectd calibrate` end to end on a tiny category."""

    def test_good_only(self, bundle_dir, category, capsys):
        """Good-only calibration: good images then score < 1.0, defects >= 1.0, bundle re-hashed and loadable."""
        assert np.all(scores(bundle_dir, category / "good") >= 1.0)  # provisional thresholds reject everything
        rc = main(["calibrate", "--bundle", str(bundle_dir), "--good", str(category / "good"), "--no-int8"])
        assert rc == 0
        out = capsys.readouterr().out
        assert "expected false-reject rate 0.0% of 24 good images" in out
        meta = load_bundle(bundle_dir).meta  # hashes verified
        t = meta.thresholds
        assert t.calibrated and t.n_good == 24 and t.method.startswith("good-only")
        assert read_thresholds(bundle_dir / "model.onnx") == pytest.approx(
            {"offset": t.offset, "image": t.image, "pixel": t.pixel}, rel=1e-6
        )
        assert np.all(scores(bundle_dir, category / "good") < 1.0)
        assert np.all(scores(bundle_dir, category / "test" / "good") < 1.0)
        assert np.all(scores(bundle_dir, category / "test" / "blob") >= 1.0)

    def test_with_defects(self, bundle_dir, category, capsys):
        """With defect samples the thresholds are F1-optimal and the escape rate is printed."""
        rc = main(
            [
                "calibrate",
                "--bundle",
                str(bundle_dir),
                "--good",
                str(category / "good"),
                "--defects",
                str(category),
                "--no-int8",
            ]
        )
        assert rc == 0
        assert "expected escape rate 0.0% of 4 defective images" in capsys.readouterr().out
        t = load_bundle(bundle_dir).meta.thresholds
        assert "F1-optimal" in t.method and t.n_defect == 4
        assert t.expected_false_reject_rate == 0.0 and t.expected_escape_rate == 0.0
        blob = scores(bundle_dir, category / "test" / "blob")
        assert np.all(blob >= 1.0) and np.all(scores(bundle_dir, category / "good") < 1.0)

    def test_kfold_rates_and_figure(self, bundle_dir, category, capsys):
        """With defects, 3-fold rates are printed and stored beside the in-sample ones; the figure is in the bundle."""
        rc = main(
            ["calibrate", "--bundle", str(bundle_dir), "--good", str(category / "good")]
            + ["--defects", str(category), "--no-int8"]
        )
        assert rc == 0
        out = capsys.readouterr().out
        t = load_bundle(bundle_dir).meta.thresholds  # hashes verified, the figure's included
        assert t.cv_folds == 3 and 0 <= t.cv_false_reject_rate <= 1 and 0 <= t.cv_escape_rate <= 1
        assert f"3-fold out-of-sample: false-reject rate {100 * t.cv_false_reject_rate:.1f}%" in out
        assert f"calibration figure {bundle_dir / EVIDENCE_PNG}" in out
        assert EVIDENCE_PNG in load_bundle(bundle_dir).meta.files
        assert cv2.imread(str(bundle_dir / EVIDENCE_PNG)).shape[1] >= 1000

    def test_folds_off_and_impossible(self, bundle_dir, category, capsys):
        """--folds 0 stores no estimate; more folds than defective images is refused with the counts (exit 2)."""
        base = ["calibrate", "--bundle", str(bundle_dir), "--good", str(category / "good")]
        assert main([*base, "--folds", "0", "--no-int8"]) == 0
        assert load_bundle(bundle_dir).meta.thresholds.cv_folds is None
        assert "out-of-sample" not in capsys.readouterr().out
        assert main([*base, "--defects", str(category), "--folds", "5", "--no-int8"]) == 2
        assert "found 28 good and 4 defective" in capsys.readouterr().err

    def test_too_few_good_images(self, bundle_dir, category, tmp_path, capsys):
        """Fewer than 20 good images are refused with the numbers, and the bundle is left untouched."""
        few = tmp_path / "few"
        few.mkdir()
        for p in list_images(category / "good")[:5]:
            shutil.copy(p, few / p.name)
        before = (bundle_dir / "bundle.json").read_bytes()
        rc = main(["calibrate", "--bundle", str(bundle_dir), "--good", str(few)])
        assert rc == 2
        assert "needs at least 20 good images, found 5" in capsys.readouterr().err
        assert (bundle_dir / "bundle.json").read_bytes() == before

    def test_int8_written(self, bundle_dir, category, capsys):
        """With an evaluation set, passing INT8 flavours are listed in bundle.json with latency and AUROC change."""
        rc = main(["calibrate", "--bundle", str(bundle_dir), "--good", str(category / "good"), "--eval", str(category)])
        assert rc == 0
        out = capsys.readouterr().out
        assert "int8 tensorrt:" in out and "int8 cpu:" in out
        meta = load_bundle(bundle_dir).meta
        assert meta.metrics["image_auroc"] == 1.0 and meta.metrics["pixel_auroc"] > 0.99  # FP32 on --eval
        assert "evaluation on" in out
        for flavour in meta.int8:
            assert flavour.file in meta.files and (bundle_dir / flavour.file).is_file()
            assert flavour.fp32_ms > 0 and flavour.int8_ms > 0 and flavour.faster == (flavour.int8_ms < flavour.fp32_ms)
            assert abs(flavour.image_auroc_delta) <= 0.5
            t = meta.thresholds
            assert read_thresholds(bundle_dir / flavour.file) == pytest.approx(
                {"offset": t.offset, "image": t.image, "pixel": t.pixel}, rel=1e-6
            )
        written = {f.target for f in meta.int8}
        # The tiny detector quantises without loss: a flavour refused here means the INT8 path itself broke.
        assert written == {"tensorrt", "cpu"}, out
        for target, file in (("tensorrt", "model_int8_trt.onnx"), ("cpu", "model_int8_cpu.onnx")):
            assert (bundle_dir / file).is_file() == (target in written)
            assert f"int8 {target}: {'written' if target in written else 'not written'}" in out

    def test_stale_engine_removed(self, bundle_dir, category, capsys):
        """Recalibrating drops an engine built with the old thresholds, and says how to rebuild it."""
        from edge.bundle import EngineInfo, write_bundle

        (bundle_dir / "model.engine").write_bytes(b"engine")
        (bundle_dir / "model_fp16.onnx").write_bytes(b"fp16 graph")
        engine = EngineInfo(
            file="model.engine", precision="fp16", tensorrt_version="10.9", gpu_name="x", compute_capability="8.7"
        )
        write_bundle(bundle_dir, load_bundle(bundle_dir).meta.model_copy(update={"engine": engine}))
        rc = main(["calibrate", "--bundle", str(bundle_dir), "--good", str(category / "good"), "--no-int8"])
        assert rc == 0
        assert "export --out" in capsys.readouterr().out
        meta = load_bundle(bundle_dir).meta
        assert meta.engine is None and set(meta.files) == {"model.onnx", EVIDENCE_PNG}
        assert not (bundle_dir / "model.engine").exists() and not (bundle_dir / "model_fp16.onnx").exists()
