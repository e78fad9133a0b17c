"""Model outputs -> defect regions in original-frame pixels, and the pass/fail rule.

Thresholds live in the graph (the map is normalised so 1.0 is the calibrated threshold and `mask` is already
thresholded); this module only groups mask pixels into regions and undoes the ROI crop and resize.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge.contract import THRESHOLD
from edge.preprocess import Geometry
from edge.verdict import Region, VerdictKind


def find_regions(
    mask: np.ndarray, anomaly_map: np.ndarray, geometry: Geometry, *, min_area: int, max_regions: int
) -> tuple[Region, ...]:
    """Connected components of `mask` (h, w) as Regions in frame coordinates, largest first.

    Components smaller than `min_area` model-input pixels are dropped, then at most `max_regions` (the largest)
    are kept. `area_px` is in frame pixels; scores are taken from `anomaly_map` (h, w) over the component.
    """
    if max_regions == 0 or not mask.any():
        return ()
    count, labels, boxes, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8, copy=False), connectivity=8)
    areas = boxes[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= max(min_area, 1)][:max_regions]
    regions = []
    for label in keep:
        x, y, w, h, area = (int(v) for v in boxes[label])
        values = anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == label]
        regions.append(
            Region(
                bbox=geometry.to_frame((x, y, w, h)),
                area_px=round(area * geometry.pixel_area),
                max_score=round(float(values.max()), 4),
                mean_score=round(float(values.mean()), 4),
            )
        )
    return tuple(regions)


def judge(score: float, regions: tuple[Region, ...]) -> VerdictKind:
    """Fail when the image score reaches the threshold or any defect region survived the filters."""
    return "fail" if score >= THRESHOLD or regions else "pass"
