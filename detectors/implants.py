"""Synthetic defects implanted into clean texture crops, each with its exact mask.

Every implant changes pixels only inside the mask it returns (the effect is multiplied by the mask), so the ground
truth is exact by construction: `image != clean` implies `mask == 1`. Each kind has a subtle flavour (low contrast,
small, a 40 px rotated patch, a faint stain) because obvious implants score ~0.99 even with random features and
cannot tell detectors apart. Sizes are given for a 256 px crop and scale with the crop.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

KINDS = ("scratch", "stain", "hole", "crack", "distortion")

Implant = Callable[[np.ndarray, np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 256.0


def _centre(image: np.ndarray, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    h, w = image.shape[:2]
    m = min(margin, h / 2 - 1, w / 2 - 1)
    return float(rng.uniform(m, w - m)), float(rng.uniform(m, h - m))


def _blob(shape: tuple[int, int], centre: tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    """Irregular blob: a disc whose edge is pushed in and out by smooth noise; float map, > 0.5 is inside."""
    h, w = shape
    noise = cv2.resize(rng.uniform(-1, 1, (6, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / max(radius, 1.0) ** 2
    return (1.0 - r2) + 0.35 * noise


def _apply(image: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend `target` over `image` with per-pixel `alpha`; the mask is exactly where a pixel value changed."""
    out = image.astype(np.float32) * (1.0 - alpha[..., None]) + target.astype(np.float32) * alpha[..., None]
    out_u8 = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    mask = (alpha > 0).astype(np.uint8)
    out_u8 = np.where(mask[..., None] == 1, out_u8, image)
    return out_u8, mask


def scratch(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line, lighter or darker than the surface."""
    k = _scale(image)
    h, w = image.shape[:2]
    x0, y0 = _centre(image, rng, 20 * k)
    length = rng.uniform(0.3, 0.55) * min(h, w)
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25) * length
    t = np.linspace(-0.5, 0.5, 40)
    px = x0 + t * length * np.cos(angle) - (1 - 4 * t**2) * bend * np.sin(angle)
    py = y0 + t * length * np.sin(angle) + (1 - 4 * t**2) * bend * np.cos(angle)
    canvas = np.zeros((h, w), np.uint8)
    pts = np.stack([px, py], axis=1).round().astype(np.int32)
    thickness = 1 if subtle else max(1, round(rng.uniform(1.5, 3) * k))
    cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA)
    delta = rng.uniform(18, 30) if subtle else rng.uniform(70, 110)
    base = image.astype(np.float32)
    target = base + (delta if rng.random() < 0.5 else -delta)
    return _apply(image, np.clip(target, 0, 255), canvas.astype(np.float32) / 255.0)


def _placed_blob(image: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob of about `radius` at a random place: its soft field and its (never empty) inside mask."""
    h, w = image.shape[:2]
    field = _blob((h, w), _centre(image, rng, radius + 4), radius, rng)
    inside = field > 0.5
    if not inside.any():
        inside[h // 2, w // 2] = True
    return field, inside


def stain(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A colour spot: an irregular blob tinted towards a colour; faint when subtle."""
    k = _scale(image)
    radius = (rng.uniform(12, 22) if subtle else rng.uniform(16, 36)) * k
    field, inside = _placed_blob(image, rng, radius)
    colours = np.array([[40, 70, 140], [30, 30, 30], [150, 90, 40], [60, 150, 200], [200, 200, 210]], np.float32)
    colour = colours[rng.integers(len(colours))]
    strength = rng.uniform(0.12, 0.2) if subtle else rng.uniform(0.45, 0.7)
    soft = np.clip((field - 0.5) * 4, 0.3, 1.0)
    alpha = np.where(inside, strength * soft, 0.0).astype(np.float32)
    target = np.broadcast_to(colour, image.shape)
    return _apply(image, target, alpha)


def hole(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A small irregular pit: dark and deep, or a shallow darkening when subtle."""
    k = _scale(image)
    radius = (rng.uniform(5, 9) if subtle else rng.uniform(8, 18)) * k
    _, inside = _placed_blob(image, rng, radius)
    factor = rng.uniform(0.55, 0.72) if subtle else rng.uniform(0.1, 0.25)
    target = image.astype(np.float32) * factor
    alpha = inside.astype(np.float32)
    return _apply(image, target, alpha)


def crack(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A jagged dark line with a branch, like a crack in a tile or a cell."""
    k = _scale(image)
    h, w = image.shape[:2]
    x, y = _centre(image, rng, 30 * k)
    heading = rng.uniform(0, 2 * np.pi)
    steps = int(rng.integers(12, 20))
    step = rng.uniform(4, 7) * k
    pts = [(x, y)]
    for _ in range(steps):
        heading += rng.uniform(-0.6, 0.6)
        x = float(np.clip(x + step * np.cos(heading), 1, w - 2))
        y = float(np.clip(y + step * np.sin(heading), 1, h - 2))
        pts.append((x, y))
    canvas = np.zeros((h, w), np.uint8)
    thickness = 1 if subtle else max(1, round(2 * k))
    cv2.polylines(canvas, [np.array(pts).round().astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    start = pts[len(pts) // 2]
    branch = [start]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(steps // 3):
        heading += rng.uniform(-0.6, 0.6)
        branch.append(
            (
                float(np.clip(branch[-1][0] + step * np.cos(heading), 1, w - 2)),
                float(np.clip(branch[-1][1] + step * np.sin(heading), 1, h - 2)),
            )
        )
    cv2.polylines(canvas, [np.array(branch).round().astype(np.int32)], False, 255, 1, cv2.LINE_8)
    factor = rng.uniform(0.72, 0.82) if subtle else rng.uniform(0.25, 0.45)
    target = image.astype(np.float32) * factor
    return _apply(image, target, (canvas > 0).astype(np.float32))


def distortion(image: np.ndarray, rng: np.random.Generator, subtle: bool) -> tuple[np.ndarray, np.ndarray]:
    """A small disc of the surface rotated (subtle: 40 px) or swirled (64 px): same colours, wrong structure."""
    k = _scale(image)
    h, w = image.shape[:2]
    radius = (20 if subtle else 32) * k
    cx, cy = _centre(image, rng, radius + 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx**2 + dy**2)
    if subtle:
        theta = np.full_like(r, np.deg2rad(rng.uniform(35, 90) * rng.choice([-1, 1])))
    else:
        theta = np.deg2rad(rng.uniform(120, 220)) * np.clip(1 - r / radius, 0, 1) ** 1.5 * rng.choice([-1, 1])
    cos, sin = np.cos(theta), np.sin(theta)
    map_x = (cx + dx * cos - dy * sin).astype(np.float32)
    map_y = (cy + dx * sin + dy * cos).astype(np.float32)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inside = r <= radius
    return _apply(image, warped, inside.astype(np.float32))


IMPLANTS: dict[str, Implant] = {
    "scratch": scratch,
    "stain": stain,
    "hole": hole,
    "crack": crack,
    "distortion": distortion,
}
