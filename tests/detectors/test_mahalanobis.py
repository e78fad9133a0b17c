"""Whole-image Mahalanobis: the score against a direct Ledoit-Wolf computation, the honest map, levels, checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from detectors import registry
from detectors.checkpoint import CheckpointMeta, load, save
from detectors.scoring import predict, to_tensor
from detectors.trunk import EfficientNetTrunk
from edge.evaluation.dataset import read_category, read_image

SIZE = 64


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    """Mahalanobis (ImageNet Lite0, level 5) fitted on the tiny brick category's 8 training crops."""
    cat = read_category(tiny_dataset / "brick")
    images = np.stack([read_image(p, (SIZE, SIZE)) for p in cat.train])
    model, params, log = registry.train("mahalanobis", images, {"level": 5}, (SIZE, SIZE))
    return model, params, log, images, cat


def test_score_is_the_ledoit_wolf_mahalanobis_distance(fitted):
    """The in-graph score equals sqrt((v - mu)^T P (v - mu)) with sklearn's Ledoit-Wolf fit on the pooled features."""
    model, _, log, images, cat = fitted
    with torch.no_grad():
        pooled = model.trunk(to_tensor(images)).mean(dim=(2, 3)).double().numpy()
    lw = LedoitWolf().fit(pooled)
    test = np.stack([read_image(s.path, (SIZE, SIZE)) for s in cat.test])
    with torch.no_grad():
        v = model.trunk(to_tensor(test)).mean(dim=(2, 3)).double().numpy()
    diff = v - lw.location_
    expected = np.sqrt(np.einsum("nd,de,ne->n", diff, lw.precision_, diff))
    scores, _ = predict(model, test)
    np.testing.assert_allclose(scores, expected, rtol=2e-3)
    assert log["shrinkage"] == pytest.approx(lw.shrinkage_)


def test_map_is_on_the_score_scale(fitted):
    """On the training images, the median and largest map peaks equal the median and largest scores."""
    model, _, _, images, _ = fitted
    scores, maps = predict(model, images)
    peaks = maps.reshape(len(maps), -1).max(1)
    assert np.median(peaks) == pytest.approx(np.median(scores), rel=1e-3)
    assert peaks.max() == pytest.approx(scores.max(), rel=1e-3)


def test_checkpoint_round_trip(fitted, tmp_path):
    """A saved model loads with weights_only and scores the same."""
    model, params, _, images, _ = fitted
    save(tmp_path / "m.pt", model, CheckpointMeta("mahalanobis", params.model_dump(), (SIZE, SIZE), {}, {}, {}))
    loaded, _ = load(tmp_path / "m.pt")
    np.testing.assert_allclose(predict(loaded, images[:3])[0], predict(model, images[:3])[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("level", "channels", "stride"), [(0, 32, 2), (3, 40, 8), (5, 112, 16), (7, 320, 32), (8, 1280, 32)]
)
def test_trunk_levels(level, channels, stride):
    """Levels cut EfficientNet-Lite0 after the stem / a stage / the head conv, with that level's width and stride."""
    trunk = EfficientNetTrunk("efficientnet_lite0", level).eval()
    with torch.no_grad():
        out = trunk(torch.rand(1, 3, 64, 64))
    assert trunk.channels == channels and trunk.stride == stride
    assert out.shape == (1, channels, 64 // stride, 64 // stride)
