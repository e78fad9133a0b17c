"""Fitting the whole-image Gaussian: one pass over the good images, Ledoit-Wolf shrinkage, then the map scale."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from detectors.mahalanobis.model import WholeImageGaussian
from detectors.mapscale import fit_map_scale
from detectors.registry import FitContext
from detectors.scoring import to_tensor
from detectors.training import check_model

if TYPE_CHECKING:
    from detectors.mahalanobis import MahalanobisParams


def fit(model: nn.Module, images: np.ndarray, params: MahalanobisParams, ctx: FitContext) -> dict[str, Any]:
    """Pooled features of every good image -> mean and Ledoit-Wolf covariance (its inverse goes into the graph).

    With ~200 images and 112-1280 feature channels the sample covariance is singular or nearly so; Ledoit-Wolf picks
    the shrinkage towards a scaled identity that minimises the expected error, from the data alone (no knob). The
    shrinkage it chose is in the log.
    """
    from sklearn.covariance import LedoitWolf

    model = check_model(model, WholeImageGaussian, "mahalanobis")
    if len(images) < 2:
        msg = f"mahalanobis needs at least 2 good images to estimate a covariance, found {len(images)}"
        raise ValueError(msg)
    start = time.monotonic()
    model.trunk.load_weights(params.weights)
    model.to(ctx.device).eval()
    batches = [images[i : i + params.batch_size] for i in range(0, len(images), params.batch_size)]
    with torch.no_grad():
        pooled = torch.cat([model.trunk(to_tensor(b, ctx.device)).mean(dim=(2, 3)).double().cpu() for b in batches])
        lw = LedoitWolf().fit(pooled.numpy())
        model.mean.copy_(torch.from_numpy(lw.location_))
        model.precision.copy_(torch.from_numpy(lw.precision_))
        raw = [model.raw(to_tensor(b, ctx.device)) for b in batches]
    scores = torch.cat([s for s, _ in raw]).double().cpu().numpy()
    a, b = fit_map_scale(scores, torch.cat([m for _, m in raw]).double().cpu().numpy())
    model.map_scale.copy_(torch.tensor([a, b]))
    return {
        "loss": [float(np.mean(scores**2)) / pooled.shape[1]],  # ~1 in-sample: a sanity figure, not a loss
        "steps": len(images),
        "minutes": (time.monotonic() - start) / 60,
        "shrinkage": float(lw.shrinkage_),
    }
