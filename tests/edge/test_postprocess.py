"""Mask -> regions in frame coordinates, and the pass/fail rule."""

from __future__ import annotations

import numpy as np

from edge.postprocess import find_regions, judge
from edge.preprocess import Geometry
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
