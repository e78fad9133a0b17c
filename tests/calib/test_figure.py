"""The calibration evidence PNG: a real image with the threshold line where the threshold is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from calib.crossval import FoldRates
from calib.figure import draw_evidence


def blue_fraction(image: np.ndarray, x: int, y: tuple[int, int]) -> float:
    """Share of pixels in column x (between y[0] and y[1]) that are the threshold's pure blue (BGR)."""
    column = image[y[0] : y[1], x].astype(int)
    return float(np.mean((column[:, 0] > 200) & (column[:, 1] < 60) & (column[:, 2] < 60)))


@pytest.mark.parametrize("with_defects", [True, False])
def test_threshold_line_is_drawn_at_one(tmp_path, with_defects):
    """The PNG decodes, and the blue threshold line runs down the histogram panel at 1.0 and nowhere near it."""
    rng = np.random.default_rng(0)
    good = rng.normal(0.2, 0.3, 60)
    defect = rng.normal(2.0, 0.6, 25) if with_defects else None
    rates = FoldRates(3, 60, 25 if with_defects else 0, 2, 1 if with_defects else 0, (1.0, 1.1, 0.9))
    ev = draw_evidence(tmp_path / "calibration.png", good, defect, title="test", rates=rates)
    assert ev.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(ev.path), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[1] >= 1000
    assert blue_fraction(image, ev.threshold_x, ev.threshold_y) > 0.9
    for dx in (-40, 40):  # bars and axes elsewhere are never that blue
        assert blue_fraction(image, ev.threshold_x + dx, ev.threshold_y) < 0.05
    # Good bars (green) lie left of the line: at score 0.2 the histogram panel has green pixels.
    left = image[ev.threshold_y[0] : ev.threshold_y[1], : ev.threshold_x].astype(int)
    greenish = (left[..., 1] > left[..., 2] + 40) & (left[..., 1] > left[..., 0] + 40)
    assert greenish.sum() > 200
