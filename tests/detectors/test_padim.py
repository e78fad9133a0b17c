"""Tests for the PaDiM detector and its backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import registry
from detectors.implants import IMPLANTS
from detectors.padim.train import cholesky_inverse
from detectors.scoring import predict
from edge.evaluation.dataset import read_category, read_image

TINY = {"d": 24}


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    """PaDiM (ImageNet EfficientNet-Lite0, d=24) fitted on the tiny brick category."""
    cat = read_category(tiny_dataset / "brick")
    images = np.stack([read_image(p, (64, 64)) for p in cat.train])
    model, _, log = registry.train("padim", images, TINY, (64, 64), progress=False)
    return model, log, cat


class TestCholeskyInverse:
    """The Cholesky inverse used instead of torch 2.14's broken batched linalg.inv."""

    def test_matches_numpy_on_a_batch(self):
        """A batch of 16 SPD matrices inverts to numpy's answer."""
        a = np.random.default_rng(0).normal(size=(16, 30, 30))
        cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(30)
        got = cholesky_inverse(torch.from_numpy(cov)).numpy()
        np.testing.assert_allclose(got, np.linalg.inv(cov), rtol=1e-6, atol=1e-8)


class TestPadim:
    """Fitting and scoring."""

    def test_fit_fills_the_gaussian(self, fitted):
        """After fit the per-patch inverse covariances are symmetric and the in-sample distance is sane."""
        model, log, _ = fitted
        assert log["steps"] == 8 and len(log["loss"]) == 1 and 0 < log["loss"][0] < 5
        inv = model.inv_cov
        assert inv.shape == (64, 24, 24)
        torch.testing.assert_close(inv, inv.transpose(1, 2), rtol=1e-4, atol=1e-4)

    def test_outputs_contract(self, fitted):
        """The forward pass returns (B,) scores equal to the max of (B, 1, H, W) maps."""
        model, _, _ = fitted
        with torch.no_grad():
            score, amap = model(torch.rand(3, 3, 64, 64))
        assert score.shape == (3,) and amap.shape == (3, 1, 64, 64)
        torch.testing.assert_close(score, amap.flatten(1).amax(1))

    def test_defects_score_higher_where_they_are(self, fitted):
        """An obvious implant raises a good crop's score, and the map is higher inside the defect than outside."""
        model, _, cat = fitted
        clean = np.stack([read_image(s.path, (64, 64)) for s in cat.test if s.label == 0])
        rng = np.random.default_rng(0)
        implanted = [IMPLANTS[kind](image, rng, False) for image in clean for kind in ("stain", "hole", "scratch")]
        bad = np.stack([image for image, _ in implanted])
        clean_scores, _ = predict(model, clean)
        bad_scores, bad_maps = predict(model, bad)
        higher = bad_scores > np.repeat(clean_scores, 3)
        inside = [
            amap[mask == 1].mean() > amap[mask == 0].mean() for amap, (_, mask) in zip(bad_maps, implanted, strict=True)
        ]
        assert higher.mean() >= 0.75 and np.mean(inside) > 0.5

    def test_shared_gaussian(self, fitted):
        """`shared` fits one Gaussian for all positions."""
        _, _, cat = fitted
        images = np.stack([read_image(p, (64, 64)) for p in cat.train])
        model, _, _ = registry.train("padim", images, {**TINY, "shared": True}, (64, 64), progress=False)
        assert model.inv_cov.shape == (1, 24, 24)
        scores, maps = predict(model, images[:2])
        assert np.isfinite(scores).all() and maps.shape == (2, 64, 64)

    def test_random_backbone_warns(self):
        """The random-weights control says it is a control."""
        model = registry.build("padim", {"d": 8, "weights": "random"}, (32, 32))
        with pytest.warns(UserWarning, match="control"):
            model.backbone.load_weights("random")

    def test_bad_d_is_rejected(self):
        """A `d` larger than the feature channels is a clear error."""
        with pytest.raises(ValueError, match="0 < d <= 176"):
            registry.build("padim", {"d": 500}, (64, 64))
