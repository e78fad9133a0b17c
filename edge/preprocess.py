"""Frame -> model input: optional ROI crop, resize straight into the backend's input slot, colour order.

The resize writes into the backend-owned buffer (`slot.input[i]`), so there is no per-frame allocation beyond
OpenCV's own scratch. INTER_AREA matches how the offline side (edge/evaluation/dataset.read_image) shrinks images,
so the daemon judges exactly what calibration measured. The returned `Geometry` maps model pixels back to the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


class PreprocessError(ValueError):
    """Raised when a frame cannot be turned into model input (e.g. the ROI lies outside the frame)."""


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map to original-frame pixels: frame = offset + model * scale."""

    offset_x: int
    offset_y: int
    scale_x: float  # frame pixels per model pixel
    scale_y: float
    frame_width: int
    frame_height: int

    def to_frame(self, bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """A model-input box (x, y, w, h) as the smallest frame box covering it, clipped to the frame."""
        x, y, w, h = bbox
        x0 = max(0, math.floor(self.offset_x + x * self.scale_x))
        y0 = max(0, math.floor(self.offset_y + y * self.scale_y))
        x1 = min(self.frame_width, math.ceil(self.offset_x + (x + w) * self.scale_x))
        y1 = min(self.frame_height, math.ceil(self.offset_y + (y + h) * self.scale_y))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)

    @property
    def pixel_area(self) -> float:
        """Frame pixels covered by one model pixel."""
        return self.scale_x * self.scale_y

    @classmethod
    def whole_frame(cls, frame_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> Geometry:
        """The geometry of a whole frame (H, W, ...) resized to the model size (h, w, ...), no ROI."""
        (frame_h, frame_w), (model_h, model_w) = frame_shape[:2], model_shape[:2]
        return cls(0, 0, frame_w / model_w, frame_h / model_h, frame_w, frame_h)


def preprocess(
    image: np.ndarray,
    out: np.ndarray,
    *,
    roi: tuple[int, int, int, int] | None = None,
    color_order: str = "BGR",
) -> Geometry:
    """Crop `image` (BGR uint8) to `roi`, resize into `out` (H, W, 3 uint8, written in place), convert colour order.

    Raises:
        PreprocessError: the ROI does not fit inside the frame.
    """
    frame_h, frame_w = image.shape[:2]
    x, y = 0, 0
    if roi is not None:
        x, y, w, h = roi
        if x + w > frame_w or y + h > frame_h:
            msg = f"source.roi {list(roi)} reaches outside the {frame_w}x{frame_h} frame"
            raise PreprocessError(msg)
        image = image[y : y + h, x : x + w]
    crop_h, crop_w = image.shape[:2]
    out_h, out_w = out.shape[:2]
    if (crop_h, crop_w) == (out_h, out_w):
        np.copyto(out, image)
    else:
        cv2.resize(image, (out_w, out_h), dst=out, interpolation=cv2.INTER_AREA)
    if color_order == "RGB":
        cv2.cvtColor(out, cv2.COLOR_BGR2RGB, dst=out)
    return Geometry(x, y, crop_w / out_w, crop_h / out_h, frame_w, frame_h)
