import importlib.util

import numpy as np
import pytest
import torch

from edge.bundle import load_bundle
from edge.cli import main
from export.build import export_bundle
from tests.export.tinydet import TinyDetector, tiny_meta

torch.set_num_threads(1)
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def bundle_dir(tmp_path):
    """A tiny exported bundle."""
    bundle, _ = export_bundle(TinyDetector(), tiny_meta(), tmp_path / "bundle")
    return bundle.path


class TestExportCli:
    """`inspectd export` argument handling and the checkpoint path."""

    def test_nothing_to_do(self, tmp_path, capsys):
        """Neither --ckpt nor --engine is a usage error naming both."""
        assert main(["export", "--out", str(tmp_path / "b")]) == 2
        assert "--ckpt" in capsys.readouterr().err

    def test_missing_checkpoint(self, tmp_path, capsys):
        """A checkpoint path that does not exist is named in the error."""
        pytest.importorskip("detectors.checkpoint")
        assert main(["export", "--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")]) == 2
        assert "nope.pt" in capsys.readouterr().err

    def test_engine_needs_bundle(self, tmp_path, capsys):
        """--engine without a bundle in --out says to export first."""
        assert main(["export", "--out", str(tmp_path / "none"), "--engine"]) == 2
        assert "export one first" in capsys.readouterr().err

    @pytest.mark.skipif(HAS_TENSORRT, reason="this machine has TensorRT")
    def test_engine_without_tensorrt(self, bundle_dir, capsys):
        """On a box without TensorRT, --engine exits non-zero with a one-line explanation."""
        rc = main(["export", "--out", str(bundle_dir), "--engine", "--precision", "fp16", "--max-batch", "4"])
        err = capsys.readouterr().err.strip()
        assert rc != 0
        assert "TensorRT" in err and len(err.splitlines()) == 1
        assert load_bundle(bundle_dir).meta.engine is None

    def test_bad_max_batch(self, bundle_dir, capsys):
        """--max-batch outside 1..64 is refused by the argument parser."""
        with pytest.raises(SystemExit):
            main(["export", "--out", str(bundle_dir), "--engine", "--max-batch", "0"])
        assert "must be 1..64" in capsys.readouterr().err

    def test_checkpoint_to_bundle(self, tmp_path, capsys):
        """A real detector checkpoint (ssim_ae, tiny) exports to a verified bundle with its provisional thresholds."""
        checkpoint = pytest.importorskip("detectors.checkpoint")
        from detectors import registry

        params = {"width": 4, "latent": 8, "patch": 32, "stride": 16}
        torch.manual_seed(0)
        model = registry.build("ssim_ae", params, (64, 64)).eval()
        meta = checkpoint.CheckpointMeta(
            detector="ssim_ae",
            params=params,
            input_size=(64, 64),
            training={"category": "no-such-category", "images": 3, "hash": "ab" * 32},
            provisional={"offset": 0.0, "image": 1.0, "pixel": 0.9},
            metrics={"image_auroc": 0.75},
        )
        ckpt = tmp_path / "m.pt"
        checkpoint.save(ckpt, model, meta)
        out = tmp_path / "bundle"
        assert main(["export", "--ckpt", str(ckpt), "--out", str(out), "--name", "line3"]) == 0
        assert "parity ok" in capsys.readouterr().out
        b = load_bundle(out).meta
        assert (b.name, b.detector, b.input.height, b.opset) == ("line3", "ssim_ae", 64, 17)
        assert (b.thresholds.image, b.thresholds.pixel, b.thresholds.offset) == (1.0, 0.9, 0.0)
        assert b.training.images == 3 and b.metrics == {"image_auroc": 0.75}
        assert np.isclose(b.detector_params["width"], 4)
