"""The variation model of machine-vision libraries: per-pixel mean and spread of aligned good images.

Training stores, for every pixel, the mean grey (or colour) value of the good images and its standard deviation;
a new image is compared pixel by pixel: map = |x - mean| / max(std, floor), smoothed, score = max of the map. This is
the classic inspection of fixtured parts (printed labels, PCBs, stamped parts), where every good part puts the same
feature at the same pixel. The floor on the spread keeps pixels that never changed in training (a flat background:
std ~ 0) from turning sensor noise into defects.

It needs aligned images: the same feature at the same pixel, to well under the size of the smallest defect. Where
the part moves or the surface is a texture, the mean is a blur and the spread is the part's own contrast, so every
edge scores a few spreads and a real defect drowns among them (see the README for what that costs on textures).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.registry import DetectorOutput

_LUMA = (0.299, 0.587, 0.114)


class VariationModel(nn.Module):
    """forward(x RGB [0, 1]) -> (score (B,), anomaly_map (B, 1, H, W)): |x - mean| / spread, max over channels."""

    luma: torch.Tensor
    mean: torch.Tensor
    inv_spread: torch.Tensor

    def __init__(self, input_size: tuple[int, int], *, channels: int, blur: int, smooth: int) -> None:
        super().__init__()
        h, w = input_size
        self.input_size = (h, w)
        self.channels = channels
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1))
        self.register_buffer("mean", torch.zeros(1, channels, h, w))
        self.register_buffer("inv_spread", torch.ones(1, channels, h, w))  # 1 / max(std, floor): one multiply
        self.blur_box, self.smooth_box = blur, smooth

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> grey or RGB in [0, 1], blurred if asked (tolerates sub-pixel jitter and sensor noise)."""
        if self.channels == 1:
            x = (x * self.luma).sum(dim=1, keepdim=True)
        return box_twice(x, self.blur_box)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Raw score (B,) and map (B, 1, H, W) in units of the per-pixel good spread."""
        z = (self.prepare(x) - self.mean).abs() * self.inv_spread
        if self.channels == 3:
            z = z.amax(dim=1, keepdim=True)
        amap = box_twice(z, self.smooth_box)
        return DetectorOutput(amap.flatten(1).amax(dim=1), amap)


def box_twice(x: torch.Tensor, side: int) -> torch.Tensor:
    """A box filter of `side` px applied twice (~ a Gaussian of sigma sqrt((side^2 - 1) / 6)); side < 2 = none.

    Box filters, not a Gaussian convolution: ONNX Runtime runs a stride-1 AveragePool on a one-channel 256 x 256 map
    in ~0.06 ms of CPU, a separable 9-tap Conv pair in ~0.9 ms (it reorders single-channel maps into its blocked
    layout), which alone would break the model's 1 ms budget.
    """
    if side < 2:
        return x
    for _ in range(2):
        x = F.avg_pool2d(x, side, stride=1, padding=side // 2, count_include_pad=False)
    return x
