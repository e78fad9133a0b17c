"""EfficientAD-S detector: student-teacher regression plus an autoencoder, on a PDN teacher distilled offline."""

from __future__ import annotations

from pydantic import Field

from detectors.backbones import Backbone
from detectors.efficientad.model import EfficientAd
from detectors.efficientad.train import fit
from detectors.registry import Detector, DetectorParams
from detectors.training import Schedule


class EfficientAdParams(DetectorParams):
    """EfficientAD's parameters. Paper: widths 128/256 (PDN), 32/64 (AE), 384 channels, 256 px, 70 000 steps."""

    backbone: Backbone = Field("efficientnet_lite0", description="backbone the teacher is distilled from")
    teacher: str = Field("auto", description="'auto' (cached, distilled on generic images if missing) or a path")
    teacher_steps: int = Field(1000, ge=1, description="distillation steps when teacher is 'auto'")
    channels: int | None = Field(None, ge=1, description="teacher channels (None: the backbone's strides 8 + 16)")
    teacher_width: int = Field(32, ge=1, le=256, description="teacher PDN base width (paper: 128)")
    width: int = Field(32, ge=1, le=256, description="student PDN base width (paper: 128)")
    ae_width: int = Field(32, ge=1, le=128, description="autoencoder base width (paper: 32)")
    scale: int = Field(2, ge=1, le=4, description="PDNs run at 1/scale of the input size (1 = the paper)")
    steps: int = Field(3000, ge=1, description="training steps (upper bound; --max-minutes may stop first)")
    batch_size: int = Field(1, ge=1, le=64, description="training images per step (paper: 1)")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate (paper: 1e-4 over 70 000 steps)")
    schedule: Schedule = Field("cosine", description="cosine decay to 2 % by the end of the budget, or constant")
    hard_quantile: float = Field(0.999, ge=0, lt=1, description="hard-feature loss: only distances above it count")
    penalty: bool = Field(True, description="penalise student outputs on generic images (the paper's ImageNet term)")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of training images held out for map quantiles")


def build(params: EfficientAdParams, input_size: tuple[int, int]) -> EfficientAd:
    """An EfficientAd with untrained networks; `fit` loads the teacher and trains student and autoencoder."""
    return EfficientAd(params, input_size)


DETECTOR = Detector(
    name="efficientad",
    summary="EfficientAD-S: student-teacher + autoencoder on a PDN teacher distilled from an ImageNet backbone",
    params=EfficientAdParams,
    build=build,
    fit=fit,
    tiny={"channels": 8, "teacher_width": 4, "width": 4, "ae_width": 4, "scale": 1},
    pretrained=True,
)

__all__ = ["DETECTOR", "EfficientAd", "EfficientAdParams", "build", "fit"]
