"""EfficientAD: teacher distillation, training, quantile normalisation, checkpoint and export (tiny teacher)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx_parity import assert_bundle_parity

from detectors import registry
from detectors.checkpoint import CheckpointMeta, load, save
from detectors.efficientad.teacher import DistilSettings, TeacherError, distil, generic_images, save_teacher
from detectors.implants import IMPLANTS
from detectors.scoring import predict
from edge.cli import main
from edge.evaluation.dataset import read_category, read_image

TINY = {"teacher_width": 8, "width": 8, "ae_width": 8, "scale": 1}


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A width-8 teacher distilled from ImageNet EfficientNet-Lite0 for 40 steps on 4 generic crops."""
    images = [im[:128, :128] for im in generic_images()[:4]]
    payload = distil(DistilSettings(width=8, steps=40, batch=4, crop=64, lr=3e-3), images, progress=False)
    return save_teacher(tmp_path_factory.mktemp("teacher") / "tiny.pt", payload), payload


@pytest.fixture(scope="module")
def fitted(tiny_teacher, tiny_dataset):
    """EfficientAD trained for 30 steps on the tiny brick category at 64 px with the tiny teacher."""
    cat = read_category(tiny_dataset / "brick")
    images = np.stack([read_image(p, (64, 64)) for p in cat.train])
    params = {**TINY, "teacher": str(tiny_teacher[0]), "steps": 30, "holdout": 0.25}
    model, checked, log = registry.train("efficientad", images, params, (64, 64), progress=False)
    return model, checked, log, cat


class TestTeacher:
    """Distillation."""

    def test_distillation_loss_falls(self, tiny_teacher):
        """The teacher's regression of the backbone features improves over 40 steps."""
        _, payload = tiny_teacher
        assert payload["loss_last"] < 0.9 * payload["loss_first"]
        assert payload["backbone"] == "efficientnet_lite0" and payload["settings"]["channels"] == 152

    def test_generic_images_leave_out_the_dev_set(self):
        """The generic set is photographs only, never a dev-set source (all differ from brick/grass/gravel)."""
        import skimage.data

        sources = {skimage.data.brick().tobytes(), skimage.data.grass().tobytes(), skimage.data.gravel().tobytes()}
        images = generic_images()
        assert len(images) >= 20
        assert not any(im[..., 0].tobytes() in sources for im in images)

    def test_mismatched_teacher_is_refused(self, tiny_teacher):
        """A teacher made for another width is an error that says what to change."""
        model = registry.build("efficientad", {**TINY, "teacher_width": 16, "teacher": str(tiny_teacher[0])}, (64, 64))
        images = np.zeros((2, 64, 64, 3), np.uint8)
        with pytest.raises(TeacherError, match="teacher_width"):
            registry.get("efficientad").fit(
                model,
                images,
                registry.get("efficientad").make_params({**TINY, "teacher_width": 16, "teacher": str(tiny_teacher[0])}),
                registry.FitContext(np.random.default_rng(0), torch.device("cpu"), progress=False),
            )


class TestFit:
    """Training, normalisation, scoring, checkpoint."""

    def test_trains_and_normalises(self, fitted):
        """30 steps run; held-out good images set q_a < q_b for both maps; good images map near 0 after it."""
        model, _, log, cat = fitted
        assert log["steps"] == 30 and log["held_out"] == 2
        q = model.quantiles.tolist()
        assert q[0] < q[1] and q[2] < q[3]
        good = np.stack([read_image(s.path, (64, 64)) for s in cat.test if s.label == 0])
        scores, maps = predict(model, good)
        assert maps.shape == (len(good), 64, 64) and np.isfinite(scores).all()
        assert float(np.median(maps)) < 0.2

    def test_obvious_defects_score_higher(self, fitted):
        """Obvious implants raise the score of most good crops."""
        model, _, _, cat = fitted
        clean = np.stack([read_image(s.path, (64, 64)) for s in cat.test if s.label == 0])
        rng = np.random.default_rng(0)
        bad = np.stack([IMPLANTS[k](im, rng, False)[0] for im in clean for k in ("stain", "hole")])
        clean_scores, _ = predict(model, clean)
        bad_scores, _ = predict(model, bad)
        assert (bad_scores > np.repeat(clean_scores, 2)).mean() >= 0.75

    def test_checkpoint_round_trip(self, fitted, tmp_path):
        """weights_only save/load reproduces the maps, teacher, statistics and quantiles included."""
        model, params, _, _ = fitted
        meta = CheckpointMeta("efficientad", params.model_dump(), (64, 64), {}, {"offset": 0, "image": 1, "pixel": 1})
        save(tmp_path / "e.pt", model, meta)
        back, _ = load(tmp_path / "e.pt")
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(back(x).anomaly_map, model(x).anomaly_map)

    def test_teacher_command_lists_in_help(self, capsys):
        """`inspectd teacher build` is a command (building the real one takes minutes: not run here)."""
        with pytest.raises(SystemExit):
            main(["teacher", "--help"])
        assert "build" in capsys.readouterr().out

    def test_trained_model_exports_with_parity(self, fitted, tmp_path):
        """The fitted model goes through the bundle path: ONNX Runtime matches torch within 1e-3, same verdicts."""
        model, params, _, cat = fitted
        images = np.stack([read_image(s.path, (64, 64)) for s in cat.test])
        assert_bundle_parity(model, "efficientad", params.model_dump(), images, tmp_path / "bundle")
