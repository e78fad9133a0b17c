"""Where the part is, found from the good images alone (no annotation).

Average the training images (per-pixel median): a part that moves between images fades out of the average, a
fixed background stays. The difference between one image and that average is large where that image's part is;
binarised (Otsu, after a blur) and cleaned (closing, then dropping specks), it is the part mask. Synthetic anomalies
are then placed inside it, so the network learns defects *of the part*, not of the background (a line drawn on an
empty conveyor is not a defect anyone needs to find).

Two cases have no part to find and use the whole image: textures or a part that fills the frame (no pixel shows a
fixed background: the training images differ by more than `min_contrast` grey levels almost everywhere, so every
image's difference is its own texture), and a fixtured part that never moves (the average is the part itself; the
difference is noise, below `min_contrast` at Otsu's threshold). A regular texture can pass the first test (brick: the
brick face is at most pixels in most crops, so its median looks like a fixed background); its difference is then a
web of mortar lines, far from solid, and the third test catches it.
"""

from __future__ import annotations

import cv2
import numpy as np


def grey(image: np.ndarray) -> np.ndarray:
    """uint8 BGR (H, W, 3) or grey (H, W) -> float32 grey (H, W) in [0, 255]."""
    if image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return image.astype(np.float32)


def mean_image(images: np.ndarray) -> np.ndarray:
    """The training images' per-pixel median grey (N, H, W, 3) uint8 -> (H, W) float32: their average, robustly.

    A median rather than a mean: a part that sits on a pixel in fewer than half of the images leaves no trace in it,
    where the mean keeps a faint ghost of every position (and the ghost would then read as "part" in every image).
    """
    return np.median(np.stack([grey(image) for image in images]), axis=0).astype(np.float32)


def find_parts(images: np.ndarray, *, min_contrast: float = 12.0, min_background: float = 0.1) -> list[np.ndarray]:
    """The part mask of every training image (N, H, W, 3) uint8; all True where the images show no fixed background.

    A pixel is background when the images' median absolute deviation from their median there is under
    `min_contrast` grey levels and under a quarter of the images' own contrast (their mean standard deviation); with
    less than `min_background` of the frame like that, nothing is fixed: a texture, or a part filling the frame.
    """
    stack = np.stack([grey(image) for image in images])
    average = np.median(stack, axis=0).astype(np.float32)
    spread = np.median(np.abs(stack - average), axis=0)
    # Fixed means: far steadier across images than the images vary within themselves (a texture's pixel varies
    # across random crops about as much as across one crop), and under the noise allowance.
    steady = min(min_contrast, 0.25 * float(np.mean(stack.std(axis=(1, 2)))))
    if np.mean(spread < steady) < min_background:
        return [np.ones(average.shape, bool) for _ in images]
    return [part_mask(image, average, min_contrast=min_contrast) for image in images]


def part_mask(
    image: np.ndarray,
    average: np.ndarray,
    *,
    min_contrast: float = 12.0,
    min_share: float = 0.01,
    min_solidity: float = 0.5,
) -> np.ndarray:
    """Boolean (H, W) mask of the part in `image`, given the training average; all True when none is found.

    The part's regions (at least `min_share` of the frame each, holes filled) must fill at least `min_solidity` of
    their convex hull; a difference spread as a web over the frame is a texture's, and the whole image is the part.
    """
    h, w = average.shape
    diff = cv2.GaussianBlur(np.abs(grey(image) - average), (0, 0), max(1.0, min(h, w) / 128))
    top = float(diff.max())
    if top < min_contrast:
        return np.ones((h, w), bool)
    scaled = np.clip(diff * (255.0 / top), 0, 255).astype(np.uint8)
    otsu, binary = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if otsu * top / 255.0 < min_contrast:
        return np.ones((h, w), bool)
    k = max(3, (min(h, w) // 40) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c for c in contours if cv2.contourArea(c) >= min_share * h * w]
    if not contours:
        return np.ones((h, w), bool)
    filled = np.zeros((h, w), np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)  # holes filled: a part is solid
    hull = cv2.convexHull(np.concatenate(contours))
    if filled.sum() < min_solidity * cv2.contourArea(hull):
        return np.ones((h, w), bool)  # a web over the frame (mortar, fibres): a texture, not a part
    return filled.astype(bool)
