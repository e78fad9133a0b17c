"""PaDiM detector: patch-wise Gaussian over pretrained CNN features (see model.py)."""

from __future__ import annotations

from pydantic import Field

from detectors.backbones import Backbone
from detectors.padim.model import Padim
from detectors.padim.train import fit
from detectors.registry import Detector, DetectorParams


class PadimParams(DetectorParams):
    """PaDiM's parameters."""

    backbone: Backbone = Field("efficientnet_lite0", description="feature extractor (lite0 ships offline)")
    weights: str = Field("imagenet", description="'imagenet', 'random' (control) or a local state-dict path")
    d: int = Field(100, ge=1, le=4096, description="channels kept (random subset of the multi-scale features)")
    neighbourhood: int = Field(1, ge=0, le=4, description="patches pooled per Gaussian: radius in patches (1 = 3x3)")
    shared: bool = Field(False, description="one Gaussian for every position (textures) instead of one per patch")
    eps: float = Field(0.01, gt=0, le=10, description="covariance regulariser, relative to the mean variance")
    sigma: float = Field(4.0, gt=0, le=32, description="Gaussian smoothing of the upsampled map (px)")
    batch_size: int = Field(8, ge=1, le=256, description="images per feature batch")
    channel_seed: int = Field(0, ge=0, description="seed of the channel subset")


def build(params: PadimParams, input_size: tuple[int, int]) -> Padim:
    """A PaDiM module with an unfitted Gaussian; `fit` loads the backbone weights and fills it."""
    return Padim(params, input_size)


DETECTOR = Detector(
    name="padim",
    summary="PaDiM: patch-wise Gaussian (Mahalanobis distance) over pretrained CNN features",
    params=PadimParams,
    build=build,
    fit=fit,
    tiny={"weights": "random", "d": 10},
    pretrained=True,
)

__all__ = ["DETECTOR", "Padim", "PadimParams", "build", "fit"]
