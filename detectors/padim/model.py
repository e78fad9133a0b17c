"""PaDiM: a multivariate Gaussian per feature-map patch, anomaly = Mahalanobis distance (Defard et al. 2020).

Multi-scale features of a pretrained CNN (strides 4, 8, 16, each smoothed by a 3x3 mean so a patch sees its
neighbourhood) are resampled to stride 8 and concatenated; a fixed random subset of `d` channels is kept. Training
stores, per patch, the mean and the inverse covariance as buffers, so the Mahalanobis distance runs inside the
exported ONNX graph. The distance map is upsampled to the input size and Gaussian-smoothed; the image score is its
maximum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import FeatureExtractor
from detectors.maps import SeparableBlur, upsample
from detectors.registry import DetectorOutput

if TYPE_CHECKING:
    from detectors.padim import PadimParams

STRIDE = 8


class Padim(nn.Module):
    """Patch-wise Gaussian over CNN features; forward(x RGB [0, 1]) -> (score (B,), anomaly_map (B, 1, H, W))."""

    index: torch.Tensor
    mean: torch.Tensor
    inv_cov: torch.Tensor

    def __init__(self, params: PadimParams, input_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = input_size
        if h % STRIDE or w % STRIDE:
            msg = f"padim input size must be a multiple of {STRIDE}, found {h}x{w}"
            raise ValueError(msg)
        self.input_size = (h, w)
        self.grid = (h // STRIDE, w // STRIDE)
        self.backbone = FeatureExtractor(params.backbone)
        total = sum(self.backbone.channels)
        d = params.d
        if not 0 < d <= total:
            msg = f"padim d must satisfy 0 < d <= {total} for backbone {params.backbone}, found {d}"
            raise ValueError(msg)
        # One Gaussian per patch position, or one shared by all positions (stationary textures: every position sees
        # the same statistics, so sharing multiplies the samples per Gaussian by the number of patches).
        patches = 1 if params.shared else self.grid[0] * self.grid[1]
        gen = torch.Generator().manual_seed(params.channel_seed)
        self.register_buffer("index", torch.randperm(total, generator=gen)[:d].sort().values)
        self.register_buffer("mean", torch.zeros(patches, d))
        self.register_buffer("inv_cov", torch.eye(d).repeat(patches, 1, 1))
        self.blur = SeparableBlur(params.sigma)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, d, gh, gw): multi-scale features at stride 8, the chosen channel subset."""
        maps = self.backbone(x)
        gh, gw = self.grid
        out = []
        for stride, m in zip((4, 8, 16), maps, strict=True):
            m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
            # Static kernel and sizes (not adaptive pooling): ONNX export needs shapes known at trace time.
            if stride < STRIDE:
                m = F.avg_pool2d(m, STRIDE // stride, stride=STRIDE // stride)
            elif stride > STRIDE:
                m = F.interpolate(m, size=(gh, gw), mode="bilinear", align_corners=False)
            out.append(m)
        return torch.cat(out, dim=1).index_select(1, self.index)

    def distance(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance per patch, (B, gh, gw)."""
        b, d, gh, gw = emb.shape
        diff = emb.flatten(2).permute(2, 0, 1) - self.mean.unsqueeze(1)  # (P, B, d)
        left = torch.matmul(diff, self.inv_cov)  # (P, B, d): batched over patches, no copy of inv_cov per image
        m2 = (left * diff).sum(-1).clamp_min(0)  # (P, B)
        return m2.sqrt().transpose(0, 1).reshape(b, gh, gw)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Raw image score (B,) and anomaly map (B, 1, H, W) at input size."""
        dist = self.distance(self.features(x)).unsqueeze(1)
        amap = self.blur(upsample(dist, self.input_size))
        return DetectorOutput(amap.flatten(1).amax(1), amap)
