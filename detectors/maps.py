"""Anomaly-map finishing shared by the feature-distance detectors: upsample a patch grid, smooth it separably."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """1-D Gaussian kernel, radius 4 sigma, normalised to sum 1."""
    radius = max(1, int(math.ceil(4 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


class SeparableBlur(nn.Module):
    """Gaussian blur of a (B, 1, H, W) map as two 1-D convolutions with replicate padding (ONNX: Pad + Conv).

    The kernel is rebuilt from `sigma` (not stored in checkpoints). sigma 0 leaves the map as it is.
    """

    kernel: torch.Tensor

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel_1d(sigma) if sigma > 0 else torch.ones(1), persistent=False)

    def forward(self, amap: torch.Tensor) -> torch.Tensor:
        """Blurred map, same size."""
        if self.sigma <= 0:
            return amap
        r = self.kernel.numel() // 2
        amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="replicate"), self.kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(amap, (0, 0, r, r), mode="replicate"), self.kernel.view(1, 1, -1, 1))


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, gh, gw) patch grid, bilinearly resized to the input size (static size: exports to ONNX)."""
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
