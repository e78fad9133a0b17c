"""The self-supervised classes of the metric detector, placed on the part: `line` and `distortion`.

- `line`: a thin straight line of random colour and 1-3 px width between two points of the part (the method's
  first baseline: scratches, cracks, hairs).
- `distortion`: a square patch of the part, rotated and shifted as Keras' ImageDataGenerator did in the write-up
  (rotation_range 30 degrees, width/height_shift_range 0.2 of the patch, fill_mode "nearest"), pasted back in place:
  a bent pin, a misplaced component, a warped weave.

Only pixels inside the part mask change; a draw that would change nothing (a line on a flat region of its own
colour, a patch of a flat area) is redrawn, so every anomaly sample really differs from its good image.
"""

from __future__ import annotations

import cv2
import numpy as np

CLASSES = ("normal", "line", "distortion")
_TRIES = 8


def _point_in(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def draw_line(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A thin straight line of random colour between two points of the part (uint8 BGR in, uint8 BGR out)."""
    h, w = image.shape[:2]
    for _ in range(_TRIES):
        x0, y0 = _point_in(part, rng)
        length = rng.uniform(0.1, 0.5) * min(h, w)
        angle = rng.uniform(0, np.pi)
        x1, y1 = int(round(x0 + length * np.cos(angle))), int(round(y0 + length * np.sin(angle)))
        canvas = np.zeros((h, w), np.uint8)
        cv2.line(canvas, (x0, y0), (x1, y1), 1, int(rng.integers(1, 4)), cv2.LINE_8)
        where = (canvas == 1) & part
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        out = image.copy()
        out[where] = colour
        if np.any(out != image):
            return out
    return out


def distort_patch(image: np.ndarray, part: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square patch of the part rotated by up to 30 degrees and shifted by up to 20 % of its side, pasted back."""
    h, w = image.shape[:2]
    for _ in range(_TRIES):
        side = int(rng.uniform(0.15, 0.35) * min(h, w))
        cx, cy = _point_in(part, rng)
        x0, y0 = int(np.clip(cx - side // 2, 0, w - side)), int(np.clip(cy - side // 2, 0, h - side))
        patch = image[y0 : y0 + side, x0 : x0 + side]
        angle = rng.uniform(-30, 30)
        tx, ty = rng.uniform(-0.2, 0.2, 2) * side
        m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        m[:, 2] += (tx, ty)
        moved = cv2.warpAffine(patch, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = image.copy()
        region = part[y0 : y0 + side, x0 : x0 + side]
        out[y0 : y0 + side, x0 : x0 + side][region] = moved[region]
        if np.abs(out.astype(np.int16) - image).max() > 8:
            return out
    return out


def synthesize(image: np.ndarray, part: np.ndarray, label: int, rng: np.random.Generator) -> np.ndarray:
    """The training sample of class `label` (index into CLASSES) made from one good image and its part mask."""
    if label == 0:
        return image
    if label == 1:
        return draw_line(image, part, rng)
    if label == 2:
        return distort_patch(image, part, rng)
    msg = f"metric: class index must be 0..2 ({', '.join(CLASSES)}), found {label}"
    raise ValueError(msg)
