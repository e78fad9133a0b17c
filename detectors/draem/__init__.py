"""DRAEM (Zavrtanik et al. 2021): learns defects from synthetic anomalies on good images, no pretrained weights."""

from __future__ import annotations

from pydantic import Field

from detectors.draem.model import Draem
from detectors.draem.train import fit
from detectors.registry import Detector, DetectorParams
from detectors.training import Schedule


class DraemParams(DetectorParams):
    """Model and training parameters; a checkpoint stores them so it rebuilds the same model.

    Widths are far below the paper's (reconstructive base 128 x 5 levels, discriminative base 64 x 6 levels) so that
    a few minutes on 2 CPU cores teach it something; raise them on a GPU.
    """

    recon_base: int = Field(8, ge=1, le=256, description="reconstructive network's first width (paper: 128)")
    recon_levels: int = Field(4, ge=1, le=7, description="reconstructive network's resolution levels (paper: 5)")
    disc_base: int = Field(8, ge=1, le=256, description="discriminative U-Net's first width (paper: 64)")
    disc_levels: int = Field(4, ge=1, le=7, description="discriminative U-Net's resolution levels (paper: 6)")
    smooth_sigma: float = Field(2.0, ge=0, le=32, description="Gaussian smoothing of the defect probability (px)")
    downscale: int = Field(2, ge=1, le=8, description="sub-networks run at 1/downscale of the input size")
    pool: int = Field(21, ge=1, le=255, description="mean-pool window for the image score (paper: 21)")
    steps: int = Field(5000, ge=1, description="training steps (upper bound; --max-minutes may stop first)")
    batch_size: int = Field(8, ge=1, le=256, description="crops per step")
    crop_size: int = Field(128, ge=16, description="random training crops (px); inference runs on the whole image")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate")
    schedule: Schedule = Field("cosine", description="cosine decay to 2 % by the end of the budget, or constant")
    flip: bool = Field(True, description="random horizontal/vertical flips")
    p_anomaly: float = Field(0.5, ge=0, le=1, description="share of crops given a synthetic anomaly (paper: 0.5)")
    p_geometric: float = Field(0.3, ge=0, le=1, description="of those, share that rotate/warp a local region")
    p_line: float = Field(0.0, ge=0, le=1, description="of those, share drawn as thin lines (scratch/crack-like)")
    p_self: float = Field(0.0, ge=0, le=1, description="texture source: the image's own pixels, intensity-shifted")
    p_procedural: float = Field(0.0, ge=0, le=1, description="texture source: fractal noise / stripes (for DTD)")
    focal_weight: float = Field(1.0, ge=0, description="weight of the focal segmentation loss")
    focal_gamma: float = Field(2.0, ge=0, le=10, description="focal loss gamma")


_MODEL_KEYS = {"recon_base", "recon_levels", "disc_base", "disc_levels", "smooth_sigma", "downscale", "pool"}


def build(params: DraemParams, input_size: tuple[int, int]) -> Draem:
    """An untrained Draem for input_size=(h, w)."""
    model = Draem(**params.model_dump(include=_MODEL_KEYS))
    model.input_size = tuple(input_size)
    return model


DETECTOR = Detector(
    name="draem",
    summary="DRAEM: reconstruction + segmentation trained on synthetic anomalies, from scratch",
    params=DraemParams,
    build=build,
    fit=fit,
    tiny={"recon_base": 4, "recon_levels": 2, "disc_base": 4, "disc_levels": 2, "pool": 5},
)

__all__ = ["DETECTOR", "DraemParams", "build", "fit"]
