"""SSIM autoencoder (Bergmann et al. 2019): the classic reconstruction baseline, no pretrained weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from detectors.ssim_ae.model import SSIMAutoencoder
from detectors.ssim_ae.train import fit

# Model and training parameters; a checkpoint stores the merged dict so it rebuilds the same model.
DEFAULTS: dict[str, Any] = {
    # model
    "channels": 1,  # 1 = grey (the paper's choice for textures), 3 = RGB
    "width": 32,  # channels of the first encoder stage, doubled per stage (capped at 8x)
    "depth": 4,  # stride-2 stages: latent map at 1/16 of the input size
    "latent": 16,  # latent channels: the bottleneck (16 x 16 x 16 at 256 x 256)
    "residual": "ssim",  # "ssim" (1 - local SSIM) or "l2"
    "ssim_window": 11,  # SSIM Gaussian window (pixels), as in the paper
    "smooth_sigma": 4.0,  # Gaussian smoothing of the residual map (pixels, 0 = none)
    # training
    "steps": 3000,  # upper bound; max_minutes usually stops first on a CPU
    "batch_size": 8,
    "crop_size": 128,  # random crops of the input-size image
    "lr": 5e-4,  # 2e-3 diverged (SSIM loss rose) on brick
    "schedule": "cosine",  # "cosine": decays to 2 % by the end of steps or max_minutes; or "constant"
    "weight_decay": 1e-5,
    "l2_weight": 1.0,  # with residual "ssim": loss = (1 - SSIM) + l2_weight * MSE (pure SSIM starts slowly)
    "flip": True,  # random horizontal/vertical flips
    "jitter": 0.05,  # brightness/contrast jitter amplitude
}

_MODEL_KEYS = ("channels", "width", "depth", "latent", "residual", "ssim_window", "smooth_sigma")


def build(params: dict[str, Any], input_size: tuple[int, int]) -> nn.Module:
    """Build an untrained SSIMAutoencoder from params (missing keys take DEFAULTS) for input_size=(h, w)."""
    p = {**DEFAULTS, **params}
    model = SSIMAutoencoder(**{k: p[k] for k in _MODEL_KEYS})
    model.input_size = tuple(input_size)
    return model


__all__ = ["DEFAULTS", "build", "fit"]
