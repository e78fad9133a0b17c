"""SSIM autoencoder (Bergmann et al. 2019): the classic reconstruction baseline, no pretrained weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from detectors.registry import Detector, DetectorParams
from detectors.ssim_ae.model import SSIMAutoencoder
from detectors.ssim_ae.train import fit
from detectors.training import Schedule


class SSIMAEParams(DetectorParams):
    """Model and training parameters; a checkpoint stores them so it rebuilds the same model."""

    channels: Literal[1, 3] = Field(1, description="1 = grey (the paper's choice for textures), 3 = RGB")
    width: int = Field(32, ge=1, le=512, description="channels of the first encoder stage, doubled per stage (max 8x)")
    depth: int = Field(4, ge=1, le=7, description="stride-2 stages: latent map at 1/2**depth of the input size")
    latent: int = Field(16, ge=1, le=1024, description="latent channels: the bottleneck")
    residual: Literal["ssim", "l2"] = Field("ssim", description="residual map: 1 - local SSIM, or squared error")
    ssim_window: int = Field(11, ge=3, le=31, description="SSIM Gaussian window (px), as in the paper")
    smooth_sigma: float = Field(4.0, ge=0, le=32, description="Gaussian smoothing of the residual map (px, 0 = none)")
    steps: int = Field(3000, ge=1, description="training steps (upper bound; --max-minutes may stop first)")
    batch_size: int = Field(8, ge=1, le=256, description="crops per step")
    crop_size: int = Field(128, ge=16, description="random crops of the input-size image (px)")
    lr: float = Field(5e-4, gt=0, le=1, description="Adam learning rate (2e-3 diverged on brick)")
    schedule: Schedule = Field("cosine", description="cosine decay to 2 % by the end of the budget, or constant")
    weight_decay: float = Field(1e-5, ge=0, le=1, description="AdamW weight decay")
    l2_weight: float = Field(1.0, ge=0, description="with residual ssim: loss = (1 - SSIM) + l2_weight x MSE")
    flip: bool = Field(True, description="random horizontal/vertical flips")
    jitter: float = Field(0.05, ge=0, le=0.5, description="brightness/contrast jitter amplitude")


_MODEL_KEYS = {"channels", "width", "depth", "latent", "residual", "ssim_window", "smooth_sigma"}


def build(params: SSIMAEParams, input_size: tuple[int, int]) -> SSIMAutoencoder:
    """An untrained SSIMAutoencoder for input_size=(h, w)."""
    model = SSIMAutoencoder(**params.model_dump(include=_MODEL_KEYS))
    model.input_size = tuple(input_size)
    return model


DETECTOR = Detector(
    name="ssim_ae",
    summary="SSIM autoencoder: reconstruction residual (1 - SSIM), trained from scratch",
    params=SSIMAEParams,
    build=build,
    fit=fit,
    tiny={"width": 8, "depth": 2, "latent": 4},
)

__all__ = ["DETECTOR", "SSIMAEParams", "build", "fit"]
