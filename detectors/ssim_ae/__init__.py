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
    mode: Literal["patches", "whole"] = Field(
        "patches", description="patches: textures, tiled; whole: objects, the image resized to one patch"
    )
    patch: int = Field(128, ge=32, le=512, multiple_of=16, description="autoencoder input side (the paper: 128)")
    stride: int = Field(64, ge=8, le=512, description="tile stride of the graph in patches mode (px)")
    width: int = Field(32, ge=1, le=256, description="channels of the first stage (the paper: 32; then 2x, 4x)")
    latent: int = Field(100, ge=1, le=4096, description="latent vector size: the bottleneck (the paper: 100)")
    norm: Literal["batch", "none"] = Field(
        "batch", description="batch norm after each hidden conv (what makes it learn on a CPU budget), or none"
    )
    residual: Literal["ssim", "l2"] = Field("ssim", description="residual map: 1 - local SSIM, or squared error")
    ssim_window: int = Field(11, ge=3, le=31, description="SSIM Gaussian window (px), as in the paper")
    smooth_sigma: float = Field(4.0, ge=0, le=32, description="Gaussian smoothing of the residual map (px, 0 = none)")
    steps: int = Field(3000, ge=1, description="training steps (upper bound; --max-minutes may stop first)")
    batch_size: int = Field(8, ge=1, le=256, description="patches per step")
    lr: float = Field(1e-3, gt=0, le=1, description="AdamW learning rate")
    schedule: Schedule = Field("cosine", description="cosine decay to 2 % by the end of the budget, or constant")
    weight_decay: float = Field(1e-5, ge=0, le=1, description="AdamW weight decay (the paper: 1e-5)")
    l2_weight: float = Field(
        10.0, ge=0, description="residual ssim: loss = (1 - SSIM) + l2_weight x MSE (leaves the flat start sooner)"
    )
    flip: bool = Field(True, description="random horizontal/vertical flips")
    rotate: float = Field(0.0, ge=0, le=180, description="random rotations up to this many degrees (objects)")
    jitter: float = Field(0.0, ge=0, le=0.5, description="brightness/contrast jitter amplitude")


_MODEL_KEYS = {
    "channels",
    "mode",
    "patch",
    "stride",
    "width",
    "latent",
    "norm",
    "residual",
    "ssim_window",
    "smooth_sigma",
}


def build(params: SSIMAEParams, input_size: tuple[int, int]) -> SSIMAutoencoder:
    """An untrained SSIMAutoencoder for input_size=(h, w)."""
    return SSIMAutoencoder(input_size, **params.model_dump(include=_MODEL_KEYS))


DETECTOR = Detector(
    name="ssim_ae",
    summary="SSIM autoencoder: reconstruction residual (1 - SSIM), trained from scratch",
    params=SSIMAEParams,
    build=build,
    fit=fit,
    tiny={"width": 4, "latent": 8, "patch": 32, "stride": 16},
)

__all__ = ["DETECTOR", "SSIMAEParams", "build", "fit"]
