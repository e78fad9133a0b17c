"""DRAEM (Zavrtanik et al. 2021): reconstructive + discriminative sub-networks, no pretrained weights.

Same topology as the paper (an encoder-decoder that rebuilds the good appearance, a U-Net that compares input and
reconstruction and segments the difference), with much narrower layers so it learns something in minutes on a CPU:
the paper uses base widths 128 / 64, the defaults here are 8 / 8 and run at half resolution (see DraemParams).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detectors.registry import DetectorOutput
from detectors.ssim_ae.model import GaussianBlur


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _widths(base: int, levels: int) -> list[int]:
    return [base * min(2**i, 8) for i in range(levels)]


def _encoder(channels: int, widths: list[int]) -> tuple[nn.ModuleList, int]:
    """One conv block per resolution level (the forward pools between them); returns the blocks and last width."""
    blocks = nn.ModuleList()
    for w in widths:
        blocks.append(_block(channels, w))
        channels = w
    return blocks, channels


class Reconstructive(nn.Module):
    """Encoder-decoder without skip connections: it has to rebuild the image from a compressed code."""

    def __init__(self, base: int, levels: int, channels: int = 3) -> None:
        super().__init__()
        ws = _widths(base, levels)
        self.enc, cin = _encoder(channels, ws)
        self.dec = nn.ModuleList()
        for w in reversed(ws[:-1]):
            self.dec.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _block(cin, w))
            )
            cin = w
        self.out = nn.Conv2d(cin, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct x (sizes must be multiples of 2**(levels-1))."""
        for i, blk in enumerate(self.enc):
            x = blk(F.max_pool2d(x, 2) if i else x)
        for blk in self.dec:
            x = blk(x)
        return torch.sigmoid(self.out(x))


class Discriminative(nn.Module):
    """U-Net over (input, reconstruction): two logits per pixel (good, defect)."""

    def __init__(self, base: int, levels: int, channels: int = 6) -> None:
        super().__init__()
        ws = _widths(base, levels)
        self.enc, cin = _encoder(channels, ws)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(ws[:-1]):
            self.up.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.dec.append(_block(cin + w, w))
            cin = w
        self.out = nn.Conv2d(cin, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits (B, 2, H, W)."""
        skips = []
        for i, blk in enumerate(self.enc):
            x = blk(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for up, blk, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = blk(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class Draem(nn.Module):
    """Reconstruct, compare, segment; eval forward returns (score, map) like every detector.

    Args:
        recon_base: first-stage width of the reconstructive network (paper: 128).
        recon_levels: resolution levels of the reconstructive network (paper: 5).
        disc_base: first-stage width of the discriminative U-Net (paper: 64).
        disc_levels: resolution levels of the U-Net (paper: 6).
        smooth_sigma: Gaussian smoothing of the defect probability map (pixels, 0 = none).
        downscale: both sub-networks run at 1/downscale of the input size (average-pooled input, logits upsampled
            bilinearly); 2 makes a CPU step ~4x cheaper at a small cost in localisation.
        pool: mean-pool window for the image score (paper: 21); score = max of the pooled map.
    """

    input_size: tuple[int, ...]  # (h, w), set by `build`: training crops and export use it

    def __init__(
        self,
        *,
        recon_base: int = 8,
        recon_levels: int = 4,
        disc_base: int = 8,
        disc_levels: int = 4,
        smooth_sigma: float = 2.0,
        downscale: int = 2,
        pool: int = 21,
    ) -> None:
        super().__init__()
        self.reconstructive = Reconstructive(recon_base, recon_levels)
        self.discriminative = Discriminative(disc_base, disc_levels)
        self.downscale = int(downscale)
        self.stride = 2 ** (max(recon_levels, disc_levels) - 1) * self.downscale
        self.pool = pool
        self.smooth = GaussianBlur(smooth_sigma) if smooth_sigma > 0 else nn.Identity()

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = (-x.shape[-2]) % self.stride, (-x.shape[-1]) % self.stride
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, segmentation logits) for x RGB in [0, 1].

        The logits are at x's size; the reconstruction at 1/downscale of it (compare it with `self.shrink(x)`).
        """
        h, w = x.shape[-2:]
        xp = self.shrink(self._pad(x))
        recon = self.reconstructive(xp)
        seg = self.discriminative(torch.cat([recon, xp], dim=1))
        if self.downscale > 1:
            seg = F.interpolate(seg, scale_factor=float(self.downscale), mode="bilinear", align_corners=False)
        d = self.downscale
        return recon[..., : -(-h // d), : -(-w // d)], seg[..., :h, :w]

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool by `downscale` (identity when 1): the resolution the sub-networks see."""
        return F.avg_pool2d(x, self.downscale) if self.downscale > 1 else x

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Score (B,) and anomaly map (B, 1, H, W) = smoothed defect probability, for an RGB batch in [0, 1]."""
        _, seg = self.logits(x)
        prob = torch.softmax(seg, dim=1)[:, 1:2]
        pooled = F.avg_pool2d(prob, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
        score = pooled.flatten(1).amax(dim=1)
        return DetectorOutput(score, self.smooth(prob))
