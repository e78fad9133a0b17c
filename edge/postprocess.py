"""Model outputs -> defect regions and masks in original-frame pixels, and the pass/fail rule.

Thresholds live in the graph (the map is normalised so 1.0 is the calibrated threshold and `mask` is already
thresholded); this module only groups mask pixels into regions and undoes the ROI crop and resize (`Geometry`),
for region boxes and for the mask image the MQTT sink publishes.
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


def place_mask(mask: np.ndarray, geometry: Geometry | None = None) -> np.ndarray:
    """The model-size mask (h, w) as a uint8 {0, 255} image in frame pixels; at model size without a geometry.

    Scaled with nearest neighbour to the crop the pipeline took and placed there; outside the ROI it is 0.
    """
    m: np.ndarray = np.where(mask > 0, 255, 0).astype(np.uint8)
    if m.ndim == 3:
        m = m[..., 0]
    if geometry is None:
        return m
    fh, fw = geometry.frame_height, geometry.frame_width
    x, y = geometry.offset_x, geometry.offset_y
    w = min(round(m.shape[1] * geometry.scale_x), fw - x)
    h = min(round(m.shape[0] * geometry.scale_y), fh - y)
    if (x, y, w, h) == (0, 0, fw, fh):
        return m if m.shape == (fh, fw) else cv2.resize(m, (fw, fh), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((fh, fw), np.uint8)
    if w > 0 and h > 0:
        canvas[y : y + h, x : x + w] = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    return canvas


def mask_png(mask: np.ndarray, geometry: Geometry | None = None) -> bytes:
    """A 1-bit PNG of `mask` (non-zero = defect) placed in the frame by `geometry` (see `place_mask`)."""
    m = place_mask(mask, geometry)
    ok, buf = cv2.imencode(".png", m, [cv2.IMWRITE_PNG_BILEVEL, 1])
    if not ok:  # pragma: no cover - OpenCV always has PNG
        msg = f"PNG encoding of a {m.shape} mask failed"
        raise RuntimeError(msg)
    return buf.tobytes()
