"""PatchCore detector: nearest-neighbour distance to a coreset memory bank of pretrained patch features."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from detectors.backbones import Backbone
from detectors.patchcore.model import PatchCore
from detectors.patchcore.train import fit
from detectors.registry import Detector, DetectorParams


class PatchCoreParams(DetectorParams):
    """PatchCore's parameters (paper: WideResNet-50 strides 8 + 16, p = 3, coreset 1-10 %, 128-dim projection)."""

    backbone: Backbone = Field("efficientnet_lite0", description="feature extractor (efficientnet_lite* offline)")
    weights: str = Field("imagenet", description="'imagenet', 'random' (control) or a local state-dict path")
    strides: tuple[Literal[4, 8, 16], ...] = Field((8, 16), min_length=1, description="feature maps used (strides)")
    neighbourhood: int = Field(1, ge=0, le=3, description="locally aware patches: mean over a (2r+1)^2 window")
    coreset: float = Field(0.1, gt=0, le=1, description="share of the training patches kept in the memory bank")
    max_bank: int = Field(2048, ge=1, description="upper bound on the memory bank's rows (bounds ms/image)")
    projection: int = Field(128, ge=0, description="random projection dims for coreset selection (0 = none)")
    sigma: float = Field(4.0, ge=0, le=32, description="Gaussian smoothing of the upsampled map (px)")
    chunk: int = Field(4096, ge=64, description="bank rows per distance matmul in the graph (memory bound)")
    batch_size: int = Field(8, ge=1, le=256, description="images per feature batch")


def build(params: PatchCoreParams, input_size: tuple[int, int]) -> PatchCore:
    """A PatchCore with an empty bank; `fit` loads the backbone weights and fills it."""
    return PatchCore(params, input_size)


DETECTOR = Detector(
    name="patchcore",
    summary="PatchCore: nearest-neighbour distance to a k-center coreset of pretrained patch features",
    params=PatchCoreParams,
    build=build,
    fit=fit,
    tiny={"weights": "random", "max_bank": 64},
    pretrained=True,
)

__all__ = ["DETECTOR", "PatchCore", "PatchCoreParams", "build", "fit"]
