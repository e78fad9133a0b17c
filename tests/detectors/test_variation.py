"""The variation model: per-pixel statistics against numpy, defects on aligned parts, and what misalignment costs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detectors import registry
from detectors.checkpoint import CheckpointMeta, load, save
from detectors.scoring import predict

SIZE = 64


def printed_label(rng: np.random.Generator, shift: tuple[int, int] = (0, 0), noise: float = 3.0) -> np.ndarray:
    """A fixtured part: the same printed pattern at the same place (plus `shift` px), sensor noise, BGR uint8."""
    img = np.full((SIZE, SIZE), 90, np.uint8)
    cv2.rectangle(img, (8 + shift[0], 8 + shift[1]), (40 + shift[0], 30 + shift[1]), 220, -1)
    cv2.putText(img, "A7", (12 + shift[0], 52 + shift[1]), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 30, 2)
    img = img.astype(np.float64) + rng.normal(0, noise, img.shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def fitted():
    """Variation model (no blur, no smoothing) fitted on 12 aligned labels."""
    rng = np.random.default_rng(0)
    good = np.stack([printed_label(rng) for _ in range(12)])
    params = {"smooth": 0, "std_floor": 0.02}
    model, _, log = registry.train("variation", good, params, (SIZE, SIZE))
    return model, good, log, rng


def test_map_is_the_per_pixel_z_score(fitted):
    """Map = |grey - mean| / max(std, floor), with mean/std (unbiased) over the good images, as numpy computes it."""
    model, good, log, rng = fitted
    grey = good[..., ::-1].astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114])
    mean, std = grey.mean(0), grey.std(0, ddof=1)
    probe = printed_label(rng)
    g = probe[..., ::-1].astype(np.float64) / 255 @ np.array([0.299, 0.587, 0.114])
    expected = np.abs(g - mean) / np.maximum(std, 0.02)
    score, amap = predict(model, probe[None])
    np.testing.assert_allclose(amap[0], expected, rtol=1e-4, atol=1e-4)
    assert score[0] == pytest.approx(expected.max(), rel=1e-4)
    assert log["floored"] == pytest.approx(float(np.mean(std < 0.02)))


def test_finds_a_defect_on_an_aligned_part_not_when_misaligned(fitted):
    """A faint spot on an aligned label is its hottest region; a 2 px shift of a good label scores higher still."""
    model, _, _, rng = fitted
    aligned = printed_label(rng)
    defect = aligned.copy()
    cv2.circle(defect, (50, 14), 3, (120, 120, 120), -1)  # +30 grey levels on the background
    shifted = printed_label(rng, shift=(2, 0))
    scores, maps = predict(model, np.stack([aligned, defect, shifted]))
    y, x = np.unravel_index(np.argmax(maps[1]), maps[1].shape)
    assert abs(y - 14) <= 3 and abs(x - 50) <= 3
    assert scores[1] > 2 * scores[0]
    assert scores[2] > scores[1]  # misalignment: every shifted edge reads as a defect (why it needs fixturing)


def test_checkpoint_round_trip(fitted, tmp_path):
    """A saved variation model loads (weights_only) and gives the same maps."""
    model, good, _, _ = fitted
    params = registry.get("variation").make_params({"smooth": 0}).model_dump()
    save(tmp_path / "v.pt", model, CheckpointMeta("variation", params, (SIZE, SIZE), {}, {}, {}))
    loaded, meta = load(tmp_path / "v.pt")
    np.testing.assert_array_equal(predict(loaded, good[:2])[1], predict(model, good[:2])[1])
    assert meta.detector == "variation"


def test_needs_two_images():
    """One image has no spread: refused with the count."""
    with pytest.raises(ValueError, match="at least 2 aligned good images"):
        registry.train("variation", np.zeros((1, SIZE, SIZE, 3), np.uint8), {}, (SIZE, SIZE))


def test_colour_channels_take_the_max():
    """channels=3: the map is the largest per-channel z-score (a pure-blue change is seen, grey would dim it)."""
    rng = np.random.default_rng(1)
    good = np.stack([printed_label(rng) for _ in range(6)])
    model, _, _ = registry.train("variation", good, {"channels": 3, "smooth": 0}, (SIZE, SIZE))
    probe = good[0].copy()
    probe[30:34, 50:54, 0] = np.clip(probe[30:34, 50:54, 0].astype(int) + 60, 0, 255)  # blue (BGR index 0)
    with torch.no_grad():
        _, amap = predict(model, probe[None])
    assert np.unravel_index(np.argmax(amap[0]), amap[0].shape)[1] in range(50, 54)
