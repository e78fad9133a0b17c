"""Variation model (per-pixel mean and spread of aligned good images): the classic fixtured-part inspection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from detectors.registry import Detector, DetectorParams
from detectors.variation.model import VariationModel
from detectors.variation.train import fit


class VariationParams(DetectorParams):
    """The variation model's parameters."""

    channels: Literal[1, 3] = Field(1, description="1 = grey (as machine-vision libraries do), 3 = colour (max)")
    std_floor: float = Field(
        0.02, gt=0, le=1, description="floor on the per-pixel spread ([0, 1] grey; 0.02 ~ 5 levels): noise tolerance"
    )
    blur: int = Field(
        0, ge=0, le=15, description="box blur of the image before comparing, side in px, twice (0 = none)"
    )
    smooth: int = Field(
        3, ge=0, le=15, description="box smoothing of the map, side in px, twice (3 ~ Gaussian sigma 1.2; 0 = none)"
    )

    @field_validator("blur", "smooth")
    @classmethod
    def _odd(cls, side: int) -> int:
        if side >= 2 and side % 2 == 0:
            msg = f"a box side must be odd (centred on the pixel) or 0, found {side}"
            raise ValueError(msg)
        return side


def build(params: VariationParams, input_size: tuple[int, int]) -> VariationModel:
    """An unfitted variation model for input_size=(h, w)."""
    return VariationModel(
        (int(input_size[0]), int(input_size[1])),
        channels=params.channels,
        blur=params.blur,
        smooth=params.smooth,
    )


DETECTOR = Detector(
    name="variation",
    summary="variation model: per-pixel |x - mean| / spread of aligned good images (fixtured parts only)",
    params=VariationParams,
    build=build,
    fit=fit,
    tiny={},
)

__all__ = ["DETECTOR", "VariationModel", "VariationParams", "build", "fit"]
