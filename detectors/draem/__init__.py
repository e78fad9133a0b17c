"""DRAEM (Zavrtanik et al. 2021): learns defects from synthetic anomalies on good images, no pretrained weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from detectors.draem.model import Draem
from detectors.draem.train import fit

# Model and training parameters; a checkpoint stores the merged dict so it rebuilds the same model.
# Widths are far below the paper's (reconstructive base 128 x 5 levels, discriminative base 64 x 6 levels) so that
# a few minutes on 2 CPU cores teach it something; raise them on a GPU.
DEFAULTS: dict[str, Any] = {
    # model
    "recon_base": 8,  # reconstructive encoder-decoder: widths 8, 16, 32, 64 (paper: 128 .. 1024)
    "recon_levels": 4,
    "disc_base": 8,  # discriminative U-Net: widths 8, 16, 32, 64 (paper: 64 .. 512)
    "disc_levels": 4,
    "smooth_sigma": 2.0,  # Gaussian smoothing of the defect probability map (pixels, 0 = none)
    "downscale": 2,  # sub-networks run at 1/downscale of the input size: ~4x cheaper per step, better in minutes
    "pool": 21,  # mean-pool window for the image score (paper: 21)
    # training
    "steps": 5000,  # upper bound; max_minutes usually stops first on a CPU
    "batch_size": 8,
    "crop_size": 128,  # random crops of the input-size image (fully convolutional: inference runs on the whole image)
    "lr": 1e-3,
    "schedule": "cosine",  # "cosine": decays to 2 % by the end of steps or max_minutes; or "constant"
    "flip": True,
    "p_anomaly": 0.5,  # share of training crops that get a synthetic anomaly (paper: 0.5)
    "p_geometric": 0.3,  # of those, share that rotate/warp a local region instead of pasting foreign texture
    "p_line": 0.0,  # of those, share that draw thin lines (scratch/crack-like); the rest: Perlin + foreign texture
    # Texture family sources: the image's own pixels with shifted intensity (p_self), a procedural texture
    # (p_procedural: fractal noise / stripes, standing in for DTD), else a shuffled, jittered crop of another image.
    "p_self": 0.0,
    "p_procedural": 0.0,
    "focal_weight": 1.0,
    "focal_gamma": 2.0,
}

_MODEL_KEYS = ("recon_base", "recon_levels", "disc_base", "disc_levels", "smooth_sigma", "downscale", "pool")


def build(params: dict[str, Any], input_size: tuple[int, int]) -> nn.Module:
    """Build an untrained Draem from params (missing keys take DEFAULTS) for input_size=(h, w)."""
    p = {**DEFAULTS, **params}
    model = Draem(**{k: p[k] for k in _MODEL_KEYS})
    model.input_size = tuple(input_size)
    return model


__all__ = ["DEFAULTS", "build", "fit"]
