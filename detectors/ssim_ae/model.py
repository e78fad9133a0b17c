"""Convolutional autoencoder whose residual is measured with SSIM (Bergmann et al. 2019).

The network is fully convolutional: it is trained on random crops of good images and applied to the whole image
in one pass, so the exported graph needs no sliding window. The bottleneck is a narrow latent map (``latent``
channels at 1/2**depth resolution): narrow enough that the decoder can only rebuild the texture it has seen, so a
defect comes back as "normal texture" and the residual lights up where they differ.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from detectors.registry import DetectorOutput

# ITU-R BT.601 luma weights: the SSIM is computed on grey levels, as in the paper.
_LUMA = (0.299, 0.587, 0.114)


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """Return a normalised 2-D Gaussian kernel (size, size); the size defaults to cover ±3 sigma."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


class GaussianBlur(nn.Module):
    """Depthwise Gaussian blur with replicate padding: output has the input's size (ONNX: Pad + Conv)."""

    kernel: torch.Tensor

    def __init__(self, sigma: float, channels: int = 1, size: int | None = None) -> None:
        super().__init__()
        k = gaussian_kernel(sigma, size)
        self.pad = k.shape[-1] // 2
        self.channels = channels
        self.register_buffer("kernel", k.expand(channels, 1, *k.shape).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur each channel independently."""
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="replicate")
        return F.conv2d(x, self.kernel, groups=self.channels)


class SSIMMap(nn.Module):
    """Local SSIM between two images with a Gaussian window, one value per pixel (mean over channels).

    Conv-based so that it exports to ONNX as plain Conv nodes. Inputs are in [0, 1] (data range 1).
    """

    def __init__(self, window: int = 11, sigma: float = 1.5, channels: int = 1) -> None:
        super().__init__()
        self.blur = GaussianBlur(sigma, channels, size=window)
        self.c1 = 0.01**2
        self.c2 = 0.03**2

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Return the SSIM map (B, 1, H, W); 1 where the two images agree locally."""
        mu_a = self.blur(a)
        mu_b = self.blur(b)
        var_a = self.blur(a * a) - mu_a * mu_a
        var_b = self.blur(b * b) - mu_b * mu_b
        cov = self.blur(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + self.c1) * (2 * cov + self.c2)
        den = (mu_a * mu_a + mu_b * mu_b + self.c1) * (var_a + var_b + self.c2)
        return (num / den).mean(dim=1, keepdim=True)


def _stage(resample: nn.Module, cout: int) -> nn.Sequential:
    """A strided (down) or transposed (up) 4x4 conv, then a 3x3 conv, each with LeakyReLU."""
    return nn.Sequential(
        resample,
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _down(cin: int, cout: int) -> nn.Sequential:
    return _stage(nn.Conv2d(cin, cout, 4, stride=2, padding=1), cout)


def _up(cin: int, cout: int) -> nn.Sequential:
    return _stage(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), cout)


class SSIMAutoencoder(nn.Module):
    """Autoencoder + SSIM (or L2) residual map + Gaussian smoothing + max score.

    Args:
        channels: 1 (grey, as in the paper for textures) or 3 (RGB).
        width: channels of the first encoder stage; each further stage doubles it (capped at 8x).
        depth: number of stride-2 stages; the latent map is at 1/2**depth of the input size.
        latent: channels of the latent map (the bottleneck).
        residual: "ssim" (1 - local SSIM) or "l2" (squared error, mean over channels).
        ssim_window: SSIM Gaussian window size (pixels).
        smooth_sigma: sigma of the Gaussian applied to the residual map (0 = none).
    """

    luma: torch.Tensor
    input_size: tuple[int, ...]  # (h, w), set by `build`: training crops and export use it

    def __init__(
        self,
        *,
        channels: int = 1,
        width: int = 32,
        depth: int = 4,
        latent: int = 32,
        residual: str = "ssim",
        ssim_window: int = 11,
        smooth_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            msg = f"ssim_ae: channels must be 1 (grey) or 3 (RGB), found {channels}"
            raise ValueError(msg)
        if residual not in ("ssim", "l2"):
            msg = f"ssim_ae: residual must be 'ssim' or 'l2', found {residual!r}"
            raise ValueError(msg)
        self.channels = channels
        self.residual = residual
        self.stride = 2**depth
        widths = [min(width * 2**i, width * 8) for i in range(depth)]
        enc: list[nn.Module] = []
        cin = channels
        for w in widths:
            enc.append(_down(cin, w))
            cin = w
        enc.append(nn.Conv2d(cin, latent, 1))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent, cin, 1), nn.LeakyReLU(0.2, inplace=True)]
        # The last stage runs at full resolution, where a wide layer costs most: keep it narrow.
        for w in [*reversed(widths[:-1]), max(width // 4, 8)]:
            dec.append(_up(cin, w))
            cin = w
        dec.append(nn.Conv2d(cin, channels, 3, padding=1))
        dec.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*dec)
        self.ssim = SSIMMap(ssim_window, 1.5, channels)
        self.smooth = GaussianBlur(smooth_sigma) if smooth_sigma > 0 else nn.Identity()
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> the model's colour space (grey or RGB), still in [0, 1]."""
        if self.channels == 1:
            return (x * self.luma).sum(dim=1, keepdim=True)
        return x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode an already-prepared image; pads to a multiple of the stride and crops back."""
        h, w = x.shape[-2:]
        ph = (-h) % self.stride
        pw = (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.decoder(self.encoder(x))[..., :h, :w]

    def residual_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-pixel residual (B, 1, H, W), higher = less like the reconstruction."""
        if self.residual == "ssim":
            return 1.0 - self.ssim(x, recon)
        return ((x - recon) ** 2).mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Score (B,) and anomaly map (B, 1, H, W) for an RGB batch in [0, 1]."""
        g = self.prepare(x)
        recon = self.reconstruct(g)
        amap = self.smooth(self.residual_map(g, recon))
        score = amap.flatten(1).amax(dim=1)
        return DetectorOutput(score, amap)
