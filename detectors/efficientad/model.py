"""EfficientAD-S (Batzner et al. 2024): student-teacher feature regression plus an autoencoder, on good images.

A student regresses a distilled teacher's patch features; an autoencoder with a second student head captures
logical (global) anomalies.

- `PDN`: the patch description network (4 convs, 2 average pools, no padding: every output sees a 33 px patch).
  The teacher is a PDN distilled from a pretrained backbone (teacher.py); the student is a PDN with twice the
  teacher's output channels: the first half regresses the teacher, the second half the autoencoder.
- `Autoencoder`: strided-conv encoder to a 1x1 bottleneck, bilinear-upsampling decoder to the PDN output size.
- Maps: local = mean over channels of (teacher - student)^2, global = mean of (autoencoder - student')^2; each is
  mapped by its quantiles q_a = 0.9 -> 0 and q_b = 0.995 -> 0.1 on held-out good images (the paper's quantile
  normalisation), averaged, padded back to the PDN input grid and upsampled to the input size. Score = map maximum.

The widths and the resolution the PDNs run at (`scale`) are parameters: the paper's (128/256/256/384 channels at
256 px) costs ~20 GMAC per image, a CPU-sized default ~1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from detectors.backbones import NORMALISATION
from detectors.registry import DetectorOutput

if TYPE_CHECKING:
    from detectors.efficientad import EfficientAdParams

PDN_SHRINK = 8  # a PDN's output is (input / 4 - 8) on each side
PDN_PAD = PDN_SHRINK // 2


class PDN(nn.Module):
    """Patch description network, EfficientAD-S layout; input normalised RGB, output (B, channels, n/4-8, n/4-8)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(width, 2 * width, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(2 * width, 2 * width, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, channels, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features."""
        return self.body(x)


def pdn_output(size: int) -> int:
    """Output side of a PDN for an input side (a multiple of 4)."""
    return size // 4 - PDN_SHRINK


class Autoencoder(nn.Module):
    """Encoder: 5 stride-2 convs then one to 1x1; decoder: upsample + 3x3 conv per level, to the PDN output size."""

    def __init__(self, channels: int, width: int, size: tuple[int, int]) -> None:
        super().__init__()
        h, w = size
        if h % 32 or w % 32:
            msg = f"efficientad: the autoencoder needs a PDN input side that is a multiple of 32, found {h}x{w}"
            raise ValueError(msg)
        wide = 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, wide, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, wide, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, wide, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(wide, wide, (h // 32, w // 32)),
        )
        out = (pdn_output(h), pdn_output(w))
        self.sizes = [(h // 32, w // 32), (h // 16, w // 16), (h // 8, w // 8), (h // 4, w // 4), out]
        self.decoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(wide, wide, 3, padding=1), nn.ReLU(inplace=True), nn.Dropout(0.2))
            for _ in self.sizes
        )
        self.head = nn.Conv2d(wide, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructed teacher features, (B, channels, *PDN output)."""
        z = self.encoder(x)
        for size, stage in zip(self.sizes, self.decoder, strict=True):
            z = stage(F.interpolate(z, size=size, mode="bilinear", align_corners=False))
        return self.head(z)


class EfficientAd(nn.Module):
    """Teacher, student and autoencoder; forward(x RGB [0, 1]) -> DetectorOutput(score, anomaly_map)."""

    mean: torch.Tensor
    std: torch.Tensor
    teacher_mean: torch.Tensor
    teacher_std: torch.Tensor
    quantiles: torch.Tensor

    def __init__(self, params: EfficientAdParams, input_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = input_size
        self.scale = params.scale
        if h % (32 * self.scale) or w % (32 * self.scale):
            msg = f"efficientad input size must be a multiple of {32 * self.scale} (32 x scale), found {h}x{w}"
            raise ValueError(msg)
        self.input_size = (h, w)
        self.pdn_size = (h // self.scale, w // self.scale)
        if pdn_output(min(self.pdn_size)) < 1:
            msg = f"efficientad: PDN input {self.pdn_size} is too small (needs > 32 px: lower scale or raise the size)"
            raise ValueError(msg)
        c = params.channels or _backbone_channels(params.backbone)
        self.channels = c
        self.backbone_name = params.backbone  # the teacher must have been distilled from it
        self.teacher = PDN(c, params.teacher_width)
        self.student = PDN(2 * c, params.width)
        self.autoencoder = Autoencoder(c, params.ae_width, self.pdn_size)
        mean, std = NORMALISATION[params.backbone]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("teacher_mean", torch.zeros(1, c, 1, 1))
        self.register_buffer("teacher_std", torch.ones(1, c, 1, 1))
        # (q_a, q_b) of the local map, then of the global map, from held-out good images (filled by fit)
        self.register_buffer("quantiles", torch.tensor([0.0, 1.0, 0.0, 1.0]))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] at input size -> normalised, at the PDN resolution."""
        if self.scale > 1:
            x = F.avg_pool2d(x, self.scale)
        return (x - self.mean) / self.std

    def teacher_features(self, xn: torch.Tensor) -> torch.Tensor:
        """Teacher output normalised by the training images' channel statistics."""
        return (self.teacher(xn) - self.teacher_mean) / self.teacher_std

    def raw_maps(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(local, global) maps before quantile normalisation, (B, 1, *PDN output) each."""
        t = self.teacher_features(xn)
        s = self.student(xn)
        a = self.autoencoder(xn)
        c = self.channels
        local = ((t - s[:, :c]) ** 2).mean(1, keepdim=True)
        glob = ((a - s[:, c:]) ** 2).mean(1, keepdim=True)
        return local, glob

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Score (B,) = combined map maximum; map (B, 1, H, W)."""
        local, glob = self.raw_maps(self.prepare(x))
        q = self.quantiles
        local = 0.1 * (local - q[0]) / (q[1] - q[0])
        glob = 0.1 * (glob - q[2]) / (q[3] - q[2])
        amap = F.pad(0.5 * local + 0.5 * glob, (PDN_PAD,) * 4)  # back on the PDN input's stride-4 grid
        amap = F.interpolate(amap, size=self.input_size, mode="bilinear", align_corners=False)
        return DetectorOutput(amap.flatten(1).amax(1), amap)


def _backbone_channels(backbone: str) -> int:
    from detectors.efficientad.teacher import backbone_channels

    return backbone_channels(backbone)
