"""Resize into the backend's buffer, ROI crop, colour order and the geometry that maps regions back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.preprocess import Geometry, PreprocessError, preprocess


class TestPreprocess:
    """preprocess."""
    def test_writes_in_place_like_offline_resize(self) -> None:
        """The resized frame lands in the given buffer (no new array), identical to an INTER_AREA resize."""
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (120, 90, 3), dtype=np.uint8)
        ring = np.zeros((2, 32, 48, 3), np.uint8)
        geometry = preprocess(image, ring[1])
        assert np.array_equal(ring[1], cv2.resize(image, (48, 32), interpolation=cv2.INTER_AREA))
        assert not ring[0].any()
        assert geometry == Geometry(0, 0, 90 / 48, 120 / 32, 90, 120)

    def test_roi_then_rgb(self) -> None:
        """The ROI is cropped before resizing and RGB models get channels swapped."""
        image = np.zeros((50, 60, 3), np.uint8)
        image[10:20, 30:40] = (255, 0, 0)  # blue in BGR
        out = np.zeros((10, 10, 3), np.uint8)
        geometry = preprocess(image, out, roi=(30, 10, 10, 10), color_order="RGB")
        assert (out[..., 2] == 255).all() and not out[..., 0].any()
        assert geometry.to_frame((0, 0, 10, 10)) == (30, 10, 10, 10)

    def test_roi_outside_frame(self) -> None:
        """An ROI larger than the frame is refused with the frame size in the message."""
        with pytest.raises(PreprocessError, match="outside the 60x50 frame"):
            preprocess(np.zeros((50, 60, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), roi=(40, 0, 30, 10))


class TestGeometry:
    """Geometry."""

    @pytest.mark.parametrize(
        ("geometry", "box", "expected"),
        [
            (Geometry(0, 0, 1.0, 1.0, 64, 64), (3, 4, 5, 6), (3, 4, 5, 6)),  # identity
            (Geometry(0, 0, 2.5, 2.0, 160, 128), (2, 3, 4, 5), (5, 6, 10, 10)),  # downscaled frame
            (Geometry(100, 20, 0.5, 0.5, 200, 100), (1, 1, 3, 3), (100, 20, 2, 2)),  # ROI + upscale: covering box
            (Geometry(0, 0, 3.0, 3.0, 100, 100), (30, 30, 10, 10), (90, 90, 10, 10)),  # clipped at the frame edge
        ],
    )
    def test_to_frame(self, geometry: Geometry, box: tuple[int, int, int, int], expected: tuple[int, ...]) -> None:
        """Model boxes map to the smallest covering frame box, clipped to the frame."""
        assert geometry.to_frame(box) == expected
