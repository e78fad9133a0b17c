"""A tiny detector that keeps the detectors/ contract, and a tiny MVTec-style category it can tell apart.

Map = channel-mean of |3x3 box blur (Conv, then an identity 1x1 Conv) of (x - 0.5)|, score = max of map: a grey
noisy texture scores low, a
white or black blob scores high. Small enough that export, calibration and INT8 run in a second or two.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from torch import nn

SIZE = (32, 32)


class TinyDetector(nn.Module):
    """forward(x: float RGB NCHW [0,1]) -> (score (B,), anomaly_map (B,1,H,W)), raw."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27.0)
            self.conv.weight[1] *= -1.0
            self.conv.weight[2, 0] *= 2.0
            self.conv.bias.zero_()
        self.mix = nn.Conv2d(4, 4, 1)  # identity: a layer that does not read the image, for INT8 to quantise
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score = max of the map."""
        amap = self.mix(self.conv(x - self.mean)).abs().mean(dim=1, keepdim=True)
        return amap.amax(dim=(1, 2, 3)), amap


def tiny_meta(category: str = "", provisional: dict | None = None) -> SimpleNamespace:
    """Stands in for detectors.checkpoint.CheckpointMeta."""
    return SimpleNamespace(
        detector="tiny",
        params={"kernel": 3},
        input_size=SIZE,
        training={"category": category, "images": 8, "hash": "0" * 64},
        provisional=provisional or {"offset": 0.02, "image": 0.2, "pixel": 0.2},
        metrics={"image_auroc": 1.0, "note": "not a number"},
    )


def good_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Grey noisy texture, BGR uint8."""
    return np.clip(rng.normal(128, 6, (*size, 3)), 0, 255).astype(np.uint8)


def defect_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Good texture with a white disc; returns (image, mask {0,255})."""
    image = good_image(rng, size)
    mask = np.zeros(size, np.uint8)
    cy, cx = rng.integers(8, size[0] - 8), rng.integers(8, size[1] - 8)
    cv2.circle(mask, (int(cx), int(cy)), 4, 255, -1)
    image[mask > 0] = 250
    return image, mask


def make_category(root: Path, *, n_good: int = 24, n_test_good: int = 4, n_defect: int = 4, seed: int = 0) -> Path:
    """MVTec layout under root: good/ (held-out good images) plus train/good, test/{good,blob}, ground_truth/blob."""
    rng = np.random.default_rng(seed)
    for sub in ("good", "train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "good" / f"{i:03d}.png"), good_image(rng))
    for i in range(4):
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), good_image(rng))
    for i in range(n_test_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), good_image(rng))
    for i in range(n_defect):
        image, mask = defect_image(rng)
        cv2.imwrite(str(root / "test" / "blob" / f"{i:03d}.png"), image)
        cv2.imwrite(str(root / "ground_truth" / "blob" / f"{i:03d}_mask.png"), mask)
    return root
