"""Self-supervised deep metric learning on synthetic defects placed on the part (see model.py, train.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from detectors.metric.model import MetricNet
from detectors.metric.train import fit
from detectors.registry import Detector, DetectorParams
from detectors.training import Schedule
from detectors.trunk import Variant


class MetricParams(DetectorParams):
    """Model and training parameters; a checkpoint stores them so it rebuilds the same model."""

    backbone: Variant = Field("efficientnet_lite0", description="ImageNet EfficientNet-Lite (weights ship offline)")
    weights: str = Field("imagenet", description="'imagenet', 'random' (control) or a local state-dict path")
    classes: Literal[2, 3] = Field(3, description="2 = normal + line, 3 = normal + line + distortion")
    head: Literal["arcface", "adacos"] = Field("arcface", description="training head (the graph scores by k-NN)")
    k: int = Field(1, ge=1, le=64, description="nearest good embeddings averaged into the score (cosine k-NN)")
    steps: int = Field(2000, ge=1, description="training steps (upper bound; --max-minutes may stop first)")
    batch_size: int = Field(16, ge=2, le=256, description="images per step, classes drawn uniformly")
    lr: float = Field(3e-4, gt=0, le=1, description="AdamW learning rate of the trunk (class weights: 10x)")
    schedule: Schedule = Field("cosine", description="cosine decay to 2 % by the end of the budget, or constant")
    freeze_blocks: int = Field(
        11, ge=0, le=32, description="stem + this many blocks stay ImageNet (Lite0: 11 = stages 1-5); the rest trains"
    )
    flip: bool = Field(False, description="random horizontal flips (textures; not parts whose orientation matters)")
    arcface_scale: float = Field(30.0, gt=0, le=128, description="ArcFace logit scale s")
    arcface_margin: float = Field(0.5, ge=0, le=1.5, description="ArcFace additive angular margin m (radians)")
    adacos_min_scale: float = Field(10.0, gt=0, le=128, description="floor of AdaCos's adaptive scale (2-3 classes)")


def build(params: MetricParams, input_size: tuple[int, int]) -> MetricNet:
    """An untrained MetricNet; `fit` loads the ImageNet trunk, fine-tunes it and fills the bank."""
    return MetricNet(params.backbone, params.classes, params.k, input_size)


DETECTOR = Detector(
    name="metric",
    summary="metric learning: EfficientNet-Lite fine-tuned on good vs synthetic line/distortion; cosine k-NN + CAM",
    params=MetricParams,
    build=build,
    fit=fit,
    tiny={"weights": "random", "steps": 2, "batch_size": 4},
    pretrained=True,
)

__all__ = ["DETECTOR", "MetricNet", "MetricParams", "build", "fit"]
