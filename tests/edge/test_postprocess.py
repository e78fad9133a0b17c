"""Mask -> regions and mask PNG in frame coordinates, and the pass/fail rule."""

from __future__ import annotations

import cv2
import numpy as np

from edge.postprocess import find_regions, judge, mask_png
from edge.preprocess import Geometry, preprocess
from edge.verdict import Region

IDENTITY = Geometry(0, 0, 1.0, 1.0, 64, 64)


def blobs() -> tuple[np.ndarray, np.ndarray]:
    """A mask with three blobs (100, 16 and 4 px) and a map with a known level per blob."""
    mask = np.zeros((64, 64), np.uint8)
    amap = np.full((64, 64), 0.2, np.float32)
    for (x, y, w, h), level in [((2, 2, 10, 10), 1.5), ((40, 40, 4, 4), 1.2), ((50, 5, 2, 2), 3.0)]:
        mask[y : y + h, x : x + w] = 1
        amap[y : y + h, x : x + w] = level
    return mask, amap


class TestFindRegions:
    """find_regions."""
    def test_regions_largest_first_with_scores(self) -> None:
        """Each blob becomes a region with bbox, area and its max/mean score, largest first."""
        mask, amap = blobs()
        regions = find_regions(mask, amap, IDENTITY, min_area=0, max_regions=16)
        assert [r.bbox for r in regions] == [(2, 2, 10, 10), (40, 40, 4, 4), (50, 5, 2, 2)]
        assert [r.area_px for r in regions] == [100, 16, 4]
        assert regions[2].max_score == 3.0 and regions[0].mean_score == 1.5

    def test_min_area_and_max_regions(self) -> None:
        """Regions below min_area are dropped, then only the max_regions largest kept."""
        mask, amap = blobs()
        assert [r.area_px for r in find_regions(mask, amap, IDENTITY, min_area=16, max_regions=16)] == [100, 16]
        assert [r.area_px for r in find_regions(mask, amap, IDENTITY, min_area=0, max_regions=1)] == [100]
        assert find_regions(mask, amap, IDENTITY, min_area=0, max_regions=0) == ()
        assert find_regions(np.zeros_like(mask), amap, IDENTITY, min_area=0, max_regions=4) == ()

    def test_back_to_frame_coordinates(self) -> None:
        """Boxes and areas are in original-frame pixels: ROI offset and resize undone."""
        mask, amap = blobs()
        geometry = Geometry(100, 50, 2.0, 2.0, 400, 300)
        region = find_regions(mask, amap, geometry, min_area=50, max_regions=4)[0]
        assert region.bbox == (104, 54, 20, 20) and region.area_px == 400


class TestJudge:
    """judge."""
    def test_rule(self) -> None:
        """Fail when the score reaches 1.0 or any region survived; pass otherwise."""
        region = Region((0, 0, 1, 1), 1, 1.0, 1.0)
        assert judge(0.99, ()) == "pass"
        assert judge(1.0, ()) == "fail"
        assert judge(0.5, (region,)) == "fail"


class TestMaskPng:
    """The mask image published on <prefix>/mask."""

    def test_mask_png_is_one_bit(self) -> None:
        """The PNG is bilevel (bit depth 1 in the IHDR), which keeps a 1024x1024 mask with a blob to about 2 KB."""
        mask = np.zeros((1024, 1024), np.uint8)
        mask[100:200, 300:420] = 1
        png = mask_png(mask)
        assert png[24] == 1  # IHDR bit depth
        ok, eight_bit = cv2.imencode(".png", mask * 255)
        assert ok and len(png) < min(4096, len(eight_bit))

    def test_mask_png_is_placed_at_the_roi(self) -> None:
        """With a source ROI the mask is scaled to the crop and placed there; the rest of the frame is clean."""
        mask = np.ones((8, 8), np.uint8)
        geometry = preprocess(np.zeros((100, 200, 3), np.uint8), np.empty((8, 8, 3), np.uint8), roi=(50, 10, 40, 20))
        png = mask_png(mask, geometry)
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        expected = np.zeros((100, 200), np.uint8)
        expected[10:30, 50:90] = 255
        np.testing.assert_array_equal(image, expected)
