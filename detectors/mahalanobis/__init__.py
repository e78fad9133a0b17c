"""Whole-image Mahalanobis (Rippel et al. 2020): one Gaussian over pooled pretrained features; fastest pretrained."""

from __future__ import annotations

from pydantic import Field

from detectors.mahalanobis.model import WholeImageGaussian
from detectors.mahalanobis.train import fit
from detectors.registry import Detector, DetectorParams
from detectors.trunk import Variant


class MahalanobisParams(DetectorParams):
    """The whole-image Gaussian's parameters."""

    backbone: Variant = Field("efficientnet_lite0", description="ImageNet EfficientNet-Lite (weights ship offline)")
    weights: str = Field("imagenet", description="'imagenet', 'random' (control) or a local state-dict path")
    level: int = Field(7, ge=0, le=8, description="feature level: 0 stem, 1-7 stage outputs, 8 head conv")
    resolution: int = Field(
        0, ge=0, le=2048, description="side the image is resized to for the trunk (224 = Lite0's native); 0 = as input"
    )
    batch_size: int = Field(8, ge=1, le=256, description="images per feature batch")


def build(params: MahalanobisParams, input_size: tuple[int, int]) -> WholeImageGaussian:
    """An unfitted whole-image Gaussian; `fit` loads the backbone weights and fills it."""
    side = params.resolution
    return WholeImageGaussian(params.backbone, params.level, input_size, (side, side) if side else None)


DETECTOR = Detector(
    name="mahalanobis",
    summary="whole-image Gaussian: Mahalanobis distance of pooled EfficientNet features (no localisation)",
    params=MahalanobisParams,
    build=build,
    fit=fit,
    tiny={"weights": "random", "level": 3},
    pretrained=True,
)

__all__ = ["DETECTOR", "MahalanobisParams", "WholeImageGaussian", "build", "fit"]
