"""Convolutional autoencoder with an SSIM (or L2) residual, as Bergmann et al. 2019 describe it.

The network is the paper's (its Table 1): a `patch` x `patch` (128) input goes through nine convolutions (4x4
stride 2 and 3x3 stride 1, LeakyReLU 0.2) to a latent *vector* of `latent` (100) numbers — a dense bottleneck, so the
decoder can rebuild only what 100 numbers say about a good patch and a defect comes back as good texture — and back
through the mirror image. One change (`norm="batch"`): batch normalisation after every hidden convolution. Without
it the plain 18-layer stack starts as a flat grey and stays on the "predict the local mean" plateau far longer than
a CPU budget lasts (the experiment is in the README).

Textures (`mode="patches"`): trained on random patches; the graph cuts the input into overlapping patches (`stride`),
reconstructs them as one batch and averages the overlaps — a fixed tiling (static slices, one Concat, Pads), so it
exports to ONNX and TensorRT. Objects (`mode="whole"`): the image is resized to `patch` px, reconstructed, and the
residual map resized back; training adds flips and rotations. The residual — 1 - local SSIM (11 px Gaussian window,
sigma 1.5, C1 = 0.01^2, C2 = 0.03^2 for a data range of 1) or the squared error — is smoothed, and its maximum is the
image score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from detectors.maps import SeparableBlur, upsample
from detectors.registry import DetectorOutput

# ITU-R BT.601 luma weights: the SSIM is computed on grey levels, as in the paper.
_LUMA = (0.299, 0.587, 0.114)


def gaussian_kernel(sigma: float, size: int | None = None) -> torch.Tensor:
    """Return a normalised 1-D Gaussian kernel (size,); the size defaults to cover ±3 sigma."""
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


class GaussianBlur(nn.Module):
    """Depthwise Gaussian blur with replicate padding, as two 1-D passes: output has the input's size.

    Separable: an 11 px window costs 22 multiply-adds per pixel instead of 121 (SSIM runs five of these per step).
    ONNX: Pad + two depthwise Convs.
    """

    kernel: torch.Tensor

    def __init__(self, sigma: float, channels: int = 1, size: int | None = None) -> None:
        super().__init__()
        k = gaussian_kernel(sigma, size)
        self.pad = k.numel() // 2
        self.channels = channels
        self.register_buffer("kernel", k.expand(channels, 1, 1, k.numel()).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blur each channel independently."""
        x = F.pad(x, (self.pad, self.pad, self.pad, self.pad), mode="replicate")
        x = F.conv2d(x, self.kernel, groups=self.channels)
        return F.conv2d(x, self.kernel.transpose(2, 3), groups=self.channels)


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


def _conv(cin: int, cout: int, k: int, s: int, p: int, norm: bool, transpose: bool = False) -> list[nn.Module]:
    layer = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, k, s, p)
    return [layer, *([nn.BatchNorm2d(cout)] if norm else []), nn.LeakyReLU(0.2, inplace=True)]


def encoder(channels: int, width: int, latent: int, patch: int, norm: bool) -> nn.Sequential:
    """Table 1's encoder: patch -> /2 -> /4 (3x3) -> /8 (3x3) -> /16 (3x3, 3x3) -> 1 x 1 x latent."""
    w1, w2, w4 = width, 2 * width, 4 * width
    return nn.Sequential(
        *_conv(channels, w1, 4, 2, 1, norm),
        *_conv(w1, w1, 4, 2, 1, norm),
        *_conv(w1, w1, 3, 1, 1, norm),
        *_conv(w1, w2, 4, 2, 1, norm),
        *_conv(w2, w2, 3, 1, 1, norm),
        *_conv(w2, w4, 4, 2, 1, norm),
        *_conv(w4, w2, 3, 1, 1, norm),
        *_conv(w2, w1, 3, 1, 1, norm),
        nn.Conv2d(w1, latent, patch // 16),  # the whole (patch/16)^2 map -> one latent vector
    )


def decoder(channels: int, width: int, latent: int, patch: int, norm: bool) -> nn.Sequential:
    """The encoder mirrored; a sigmoid keeps the reconstruction in the image's [0, 1] range."""
    w1, w2, w4 = width, 2 * width, 4 * width
    return nn.Sequential(
        *_conv(latent, w1, patch // 16, 1, 0, norm, transpose=True),
        *_conv(w1, w2, 3, 1, 1, norm),
        *_conv(w2, w4, 3, 1, 1, norm),
        *_conv(w4, w2, 4, 2, 1, norm, transpose=True),
        *_conv(w2, w2, 3, 1, 1, norm),
        *_conv(w2, w1, 4, 2, 1, norm, transpose=True),
        *_conv(w1, w1, 3, 1, 1, norm),
        *_conv(w1, w1, 4, 2, 1, norm, transpose=True),
        nn.ConvTranspose2d(w1, channels, 4, 2, 1),
        nn.Sigmoid(),
    )


def tile_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets along one side: every `stride` px, plus one flush with the far edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


class SSIMAutoencoder(nn.Module):
    """Bergmann's autoencoder + tiling + SSIM (or L2) residual + smoothing + max score.

    Args:
        input_size: (h, w) of the bundle's input.
        channels: 1 (grey, the paper's choice) or 3 (RGB).
        mode: "patches" (textures: tiled patches) or "whole" (objects: the image resized to one patch).
        patch: side of the autoencoder's input (multiple of 16; the paper: 128).
        stride: tile stride in "patches" mode (px).
        width: channels of the first stage (the paper: 32; later stages 2x and 4x).
        latent: size of the latent vector (the paper: 100).
        norm: "batch" (batch normalisation after each hidden conv) or "none" (the paper as printed).
        residual: "ssim" (1 - local SSIM) or "l2" (squared error, mean over channels).
        ssim_window: SSIM Gaussian window size (px).
        smooth_sigma: sigma of the Gaussian applied to the residual map (0 = none).
    """

    luma: torch.Tensor
    inv_count: torch.Tensor

    def __init__(
        self,
        input_size: tuple[int, int],
        *,
        channels: int = 1,
        mode: str = "patches",
        patch: int = 128,
        stride: int = 64,
        width: int = 32,
        latent: int = 100,
        norm: str = "batch",
        residual: str = "ssim",
        ssim_window: int = 11,
        smooth_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        h, w = self.input_size = (int(input_size[0]), int(input_size[1]))
        if patch % 16:
            msg = f"ssim_ae: patch must be a multiple of 16 (four stride-2 stages), found {patch}"
            raise ValueError(msg)
        if mode == "patches" and min(h, w) < patch:
            msg = f"ssim_ae: input {h}x{w} is smaller than the patch {patch}; lower --param patch or use mode=whole"
            raise ValueError(msg)
        self.channels, self.mode, self.patch, self.residual = channels, mode, patch, residual
        self.encoder = encoder(channels, width, latent, patch, norm == "batch")
        self.decoder = decoder(channels, width, latent, patch, norm == "batch")
        self.ssim = SSIMMap(ssim_window, 1.5, channels)
        self.smooth = SeparableBlur(smooth_sigma)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1))
        self.tiles = [(y, x) for y in tile_starts(h, patch, stride) for x in tile_starts(w, patch, stride)]
        count = torch.zeros(1, 1, h, w)
        for y, x in self.tiles if mode == "patches" else []:
            count[..., y : y + patch, x : x + patch] += 1
        self.register_buffer("inv_count", 1.0 / count.clamp_min(1), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> the model's colour space (grey or RGB), still in [0, 1]."""
        if self.channels == 1:
            return (x * self.luma).sum(dim=1, keepdim=True)
        return x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode a batch of prepared patches (B, C, patch, patch)."""
        return self.decoder(self.encoder(x))

    def reconstruct_tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct a prepared full image from its overlapping patches, overlaps averaged."""
        b, _, h, w = x.shape
        p = self.patch
        rec = self.reconstruct(torch.cat([x[..., y : y + p, x0 : x0 + p] for y, x0 in self.tiles]))
        out = torch.zeros_like(x)
        for i, (y, x0) in enumerate(self.tiles):
            out = out + F.pad(rec[i * b : (i + 1) * b], (x0, w - p - x0, y, h - p - y))
        return out * self.inv_count

    def residual_map(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Per-pixel residual (B, 1, H, W), higher = less like the reconstruction."""
        if self.residual == "ssim":
            return 1.0 - self.ssim(x, recon)
        return ((x - recon) ** 2).mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Score (B,) and anomaly map (B, 1, H, W) for an RGB batch in [0, 1]."""
        g = self.prepare(x)
        if self.mode == "patches":
            amap = self.residual_map(g, self.reconstruct_tiled(g))
        else:
            small = F.interpolate(g, size=(self.patch, self.patch), mode="bilinear", align_corners=False)
            amap = upsample(self.residual_map(small, self.reconstruct(small)), self.input_size)
        amap = self.smooth(amap)
        return DetectorOutput(amap.flatten(1).amax(dim=1), amap)
