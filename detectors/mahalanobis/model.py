"""One Gaussian over whole-image features (Rippel et al. 2020): anomaly = Mahalanobis distance of the pooled features.

The pretrained EfficientNet-Lite feature map at one level is averaged over the image (optionally resized first, e.g.
to the backbone's native 224 px as the paper did); training fits one mean and one shrunk covariance (Ledoit-Wolf) to
those vectors; the score is the Mahalanobis distance of a new image's vector.
It judges the image as a whole and gives no localisation: the map it publishes is the same Gaussian applied to each
location's feature vector (stride 16-32), rescaled onto the score's scale (detectors/mapscale.py) — a coarse hint of
which region pulls the image away from normal, not a segmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.maps import upsample
from detectors.registry import DetectorOutput
from detectors.trunk import EfficientNetTrunk


class WholeImageGaussian(nn.Module):
    """forward(x RGB [0, 1]) -> DetectorOutput(Mahalanobis distance (B,), per-location distance map (B, 1, H, W))."""

    mean: torch.Tensor
    precision: torch.Tensor
    map_scale: torch.Tensor

    def __init__(
        self, backbone: str, level: int, input_size: tuple[int, int], resolution: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.resolution = tuple(resolution or self.input_size)  # the trunk's input size
        self.trunk = EfficientNetTrunk(backbone, level)
        d = self.trunk.channels
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("precision", torch.eye(d))  # inverse of the shrunk covariance
        self.register_buffer("map_scale", torch.tensor([1.0, 0.0]))  # (a, b): map' = a * map + b

    def distance(self, v: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of vectors (..., d) to the Gaussian."""
        diff = v - self.mean
        return (torch.matmul(diff, self.precision) * diff).sum(-1).clamp_min(0).sqrt()

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score (B,) and the unscaled per-location distance (B, 1, h, w) at the feature stride."""
        if self.resolution != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False)
        f = self.trunk(x)
        score = self.distance(f.mean(dim=(2, 3)))
        local = self.distance(f.permute(0, 2, 3, 1)).unsqueeze(1)
        return score, local

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Raw image score (B,) and anomaly map (B, 1, H, W) at input size, on the score's scale."""
        score, local = self.raw(x)
        amap = upsample(local * self.map_scale[0] + self.map_scale[1], self.input_size)
        return DetectorOutput(score, amap)
