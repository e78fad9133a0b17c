"""Synthetic anomalies for DRAEM: Perlin-noise masks filled with foreign texture, and local geometric distortions.

DRAEM (Zavrtanik et al. 2021) fills Perlin masks with DTD textures. DTD cannot be downloaded here, so the foreign
texture comes from the good images themselves, made foreign: a crop of another image, grid-shuffled, rotated and
colour-jittered. A second family moves the part's own pixels (a region rotated or warped), the kind of defect a
colour-only synthesiser never shows the network. All randomness comes from the numpy Generator passed in, so a
seed reproduces the same anomalies.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise (h, w) float32 in about [-1, 1] with res=(ry, rx) lattice cells.

    The lattice is generated on a grid that covers `shape` with whole cells and cropped, so any shape works.
    """
    h, w = shape
    ry, rx = max(1, res[0]), max(1, res[1])
    cy, cx = math.ceil(h / ry), math.ceil(w / rx)  # cell size in pixels
    hh, ww = cy * ry, cx * rx
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float64)
    gy, gx = yy / cy, xx / cx
    iy, ix = np.floor(gy).astype(int), np.floor(gx).astype(int)
    fy, fx = gy - iy, gx - ix

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grads[iy + oy, ix + ox]
        return g[..., 0] * (fx - ox) + g[..., 1] * (fy - oy)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(fx), fade(fy)
    n0 = dot(0, 0) * (1 - u) + dot(0, 1) * u
    n1 = dot(1, 0) * (1 - u) + dot(1, 1) * u
    noise = math.sqrt(2) * (n0 * (1 - v) + n1 * v)
    return noise[:h, :w].astype(np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
    min_pixels: int = 16,
) -> np.ndarray:
    """Binary float32 mask (h, w) in {0, 1}: thresholded, randomly rotated Perlin noise (the paper's recipe).

    Lattice resolution is 2**k cells per side, k drawn from [min_scale, max_scale) per axis; it redraws until
    at least `min_pixels` pixels are set (at most 10 tries), so a "defective" sample really has a defect.
    """
    h, w = shape
    mask = np.zeros(shape, np.float32)
    for _ in range(10):
        sy = 2 ** int(rng.integers(min_scale, max_scale))
        sx = 2 ** int(rng.integers(min_scale, max_scale))
        noise = perlin_noise(shape, (sy, sx), rng)
        angle = float(rng.uniform(-90, 90))
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        noise = cv2.warpAffine(noise, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
        mask = (noise > threshold).astype(np.float32)
        if mask.sum() >= min_pixels:
            break
    return mask


def _jitter_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random colour changes (gamma, gain, channel mix, invert, posterize); img float32 (h, w, 3) in [0, 1]."""
    out = img
    ops = rng.permutation(6)[:3]
    for op in ops:
        if op == 0:
            out = out ** float(rng.uniform(0.5, 2.0))
        elif op == 1:
            out = out * float(rng.uniform(0.6, 1.4)) + float(rng.uniform(-0.2, 0.2))
        elif op == 2:
            mix = np.eye(3, dtype=np.float32) + rng.uniform(-0.4, 0.4, (3, 3)).astype(np.float32)
            out = out @ mix.T
        elif op == 3:
            out = 1.0 - out
        elif op == 4:
            levels = float(2 ** int(rng.integers(2, 5)))
            out = np.floor(out * levels) / levels
        else:
            mean = out.mean()
            out = (out - mean) * float(rng.uniform(0.5, 2.0)) + mean
        out = np.clip(out, 0.0, 1.0)
    return out.astype(np.float32)


def foreign_texture(sources: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A texture that does not belong: a crop of a random source image, grid-shuffled, rotated and colour-jittered.

    Args:
        sources: float32 (N, H, W, 3) in [0, 1], the good training images.
        shape: (h, w) of the texture to return.
        rng: random source.
    """
    h, w = shape
    src = sources[int(rng.integers(len(sources)))]
    sh, sw = src.shape[:2]
    ch, cw = min(h, sh), min(w, sw)
    y, x = int(rng.integers(sh - ch + 1)), int(rng.integers(sw - cw + 1))
    tex = cv2.resize(src[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:  # shuffle a grid of cells: destroys the regular structure of the good texture
        g = int(rng.integers(2, 9))
        gh, gw = h // g, w // g
        if gh > 0 and gw > 0:
            cells = [tex[i * gh : (i + 1) * gh, j * gw : (j + 1) * gw] for i in range(g) for j in range(g)]
            order = rng.permutation(len(cells))
            rows = [np.concatenate([cells[order[i * g + j]] for j in range(g)], axis=1) for i in range(g)]
            tex = tex.copy()
            tex[: g * gh, : g * gw] = np.concatenate(rows, axis=0)
    angle = float(rng.uniform(-90, 90))
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, float(rng.uniform(0.7, 1.5)))
    tex = cv2.warpAffine(tex, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    return _jitter_colour(tex, rng)


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A texture from no image at all (stands in for DTD): fractal Perlin noise or stripes between two colours.

    Images of the same stochastic texture (grass, gravel) stay "normal" when shuffled; these never do.
    """
    h, w = shape
    if rng.random() < 0.6:
        base = int(rng.integers(1, 5))
        octaves = [perlin_noise(shape, (2 ** (base + k),) * 2, rng) * 0.5**k for k in range(3)]
        field = sum(octaves[1:], octaves[0])
    else:
        angle = float(rng.uniform(0, np.pi))
        period = float(rng.uniform(3, 24))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        field = np.sin(2 * np.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    c0, c1 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    return (c0 + (c1 - c0) * field[..., None]).astype(np.float32)


def intensity_shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image itself, aligned, darker, lighter or tinted: a stain or pit where the structure carries on."""
    if rng.random() < 0.6:
        gain = float(rng.choice([rng.uniform(0.3, 0.85), rng.uniform(1.15, 1.7)]))
        out = img * gain
    else:
        out = img + rng.uniform(-0.35, 0.35, 3).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _blob_mask(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, tuple[float, float]]:
    """A single square or ellipse region (float32 {0,1}) of 16..80 px and its centre (x, y)."""
    h, w = shape
    size = float(rng.uniform(16, min(80, 0.6 * min(h, w)) + 1))
    cx, cy = float(rng.uniform(size / 2, w - size / 2)), float(rng.uniform(size / 2, h - size / 2))
    mask = np.zeros(shape, np.uint8)
    if rng.random() < 0.5:
        half = int(size / 2)
        mask[int(cy) - half : int(cy) + half, int(cx) - half : int(cx) + half] = 1
    else:
        axes = (int(size / 2), int(size / 2 * rng.uniform(0.4, 1.0)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(np.float32), (cx, cy)


def geometric_anomaly(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotate or warp a local region of the image itself; returns (image, mask).

    Only pixels that actually changed are marked, so a rotation of a flat area yields an empty mask (the caller
    treats that sample as good).
    """
    h, w = img.shape[:2]
    if rng.random() < 0.6:
        mask, (cx, cy) = _blob_mask((h, w), rng)
        angle = float(rng.choice([-1, 1]) * rng.uniform(15, 180))
        rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
        moved = cv2.warpAffine(img, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    else:
        mask = perlin_mask((h, w), rng, min_scale=0, max_scale=4)
        amp = float(rng.uniform(3, 12))
        dx = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 8) * amp * 8
        dy = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 8) * amp * 8
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        moved = cv2.remap(img, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    changed = (np.abs(moved - img).max(axis=-1) > 0.02).astype(np.float32)
    mask = mask * changed
    out = img * (1 - mask[..., None]) + moved * mask[..., None]
    return out.astype(np.float32), mask


def line_anomaly(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Thin curvilinear defects (1-4 px random-walk polylines): darker, lighter or tinted; returns (image, mask).

    Perlin masks almost never produce long thin structures, yet scratches and cracks are the commonest surface
    defects; this family shows the network lines of every contrast, down to a faint 1 px one.
    """
    h, w = img.shape[:2]
    canvas = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        heading = float(rng.uniform(0, 2 * np.pi))
        step = float(rng.uniform(3, 8))
        wiggle = float(rng.uniform(0.05, 0.6))
        pts = [(x, y)]
        for _ in range(int(rng.integers(6, 30))):
            heading += float(rng.uniform(-wiggle, wiggle))
            x, y = x + step * math.cos(heading), y + step * math.sin(heading)
            pts.append((x, y))
        thickness = int(rng.choice([1, 1, 2, 3, 4]))
        cv2.polylines(canvas, [np.array(pts).round().astype(np.int32)], False, 1, thickness, cv2.LINE_8)
    mask = canvas.astype(np.float32)
    kind = rng.random()
    if kind < 0.4:  # darker (crack, groove)
        target = img * float(rng.uniform(0.3, 0.9))
    elif kind < 0.8:  # lighter or darker by a fixed step (scratch)
        target = img + float(rng.choice([-1, 1]) * rng.uniform(0.04, 0.4))
    else:  # tinted
        target = img + rng.uniform(-0.3, 0.3, 3).astype(np.float32)
    target = np.clip(target, 0.0, 1.0)
    changed = (np.abs(target - img).max(axis=-1) > 0.01).astype(np.float32)
    mask = mask * changed
    out = img * (1 - mask[..., None]) + target * mask[..., None]
    return out.astype(np.float32), mask


def synthesize(
    img: np.ndarray,
    sources: np.ndarray,
    rng: np.random.Generator,
    *,
    p_anomaly: float = 0.5,
    p_geometric: float = 0.3,
    p_line: float = 0.0,
    p_self: float = 0.0,
    p_procedural: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: (image, mask) with float32 image (h, w, 3) in [0, 1] and mask (h, w) in {0, 1}.

    With probability 1 - p_anomaly the image comes back unchanged with an empty mask. Otherwise a geometric
    anomaly (p_geometric), a thin line (p_line), or else a Perlin mask filled with foreign texture, blended with
    opacity 1 - beta, beta ~ U(0, 0.8) as in the paper, so faint defects are part of the training distribution.
    The texture is the image's own pixels with shifted intensity (p_self), a procedural texture (p_procedural),
    or else a foreign crop of another good image.
    """
    h, w = img.shape[:2]
    if rng.random() >= p_anomaly:
        return img, np.zeros((h, w), np.float32)
    family = rng.random()
    if family < p_geometric:
        return geometric_anomaly(img, rng)
    if family < p_geometric + p_line:
        return line_anomaly(img, rng)
    mask = perlin_mask((h, w), rng)
    source = rng.random()
    if source < p_self:
        tex = intensity_shift(img, rng)
    elif source < p_self + p_procedural:
        tex = _jitter_colour(procedural_texture((h, w), rng), rng)
    else:
        tex = foreign_texture(sources, (h, w), rng)
    beta = float(rng.uniform(0.0, 0.8))
    m = mask[..., None]
    out = img * (1 - m) + (1 - beta) * tex * m + beta * img * m
    return out.astype(np.float32), mask
