"""Fitting the variation model: one pass of per-pixel first and second moments over the good images."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from detectors.registry import FitContext
from detectors.scoring import to_tensor
from detectors.training import check_model
from detectors.variation.model import VariationModel

if TYPE_CHECKING:
    from detectors.variation import VariationParams


def fit(model: nn.Module, images: np.ndarray, params: VariationParams, ctx: FitContext) -> dict[str, Any]:
    """Set the per-pixel mean and 1 / max(std, floor) from good images (float64 sums); returns the training log.

    `floored` in the log is the share of pixels whose spread was below the floor (a flat background, or too few
    images to see a pixel vary).
    """
    model = check_model(model, VariationModel, "variation")
    if len(images) < 2:
        msg = f"the variation model needs at least 2 aligned good images to measure a spread, found {len(images)}"
        raise ValueError(msg)
    start = time.monotonic()
    model.to(ctx.device).eval()
    s1 = s2 = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(images), 16):
            g = model.prepare(to_tensor(images[i : i + 16], ctx.device)).double()
            s1 = s1 + g.sum(0, keepdim=True)
            s2 = s2 + (g * g).sum(0, keepdim=True)
    n = len(images)
    mean = s1 / n
    std = ((s2 / n - mean * mean).clamp_min(0) * n / (n - 1)).sqrt()  # unbiased
    model.mean.copy_(mean.float())
    model.inv_spread.copy_(1.0 / std.clamp_min(params.std_floor).float())
    floored = float((std < params.std_floor).double().mean())
    return {"loss": [floored], "steps": n, "minutes": (time.monotonic() - start) / 60, "floored": floored}
