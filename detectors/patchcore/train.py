"""Fitting PatchCore: one pass over the good images collecting patch features, then a k-center coreset of them."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from detectors.patchcore.coreset import kcenter_greedy
from detectors.patchcore.model import PatchCore
from detectors.progress import Progress
from detectors.registry import FitContext
from detectors.scoring import to_tensor
from detectors.training import check_model

if TYPE_CHECKING:
    from detectors.patchcore import PatchCoreParams


def patch_features(model: PatchCore, images: np.ndarray, batch: int, progress: bool) -> torch.Tensor:
    """Every training patch's feature, (N x gh x gw, dim), on the CPU."""
    out = []
    device = model.bank.device
    with torch.no_grad(), Progress(len(images), "patchcore features", unit="image", enabled=progress) as bar:
        for i in range(0, len(images), batch):
            emb = model.features(to_tensor(images[i : i + batch], device))
            out.append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1]).cpu())
            bar.update(emb.shape[0])
    return torch.cat(out)


def fit(model: nn.Module, images: np.ndarray, params: PatchCoreParams, ctx: FitContext) -> dict[str, Any]:
    """Fill the memory bank: coreset = min(ceil(coreset x patches), max_bank) patches chosen by greedy k-center."""
    model = check_model(model, PatchCore, "patchcore")
    start = time.monotonic()
    model.backbone.load_weights(params.weights)
    model.to(ctx.device).eval()
    feats = patch_features(model, images, params.batch_size, ctx.progress)
    k = max(1, min(math.ceil(params.coreset * len(feats)), params.max_bank, len(feats)))
    t0 = time.monotonic()
    chosen = kcenter_greedy(
        feats, k, projection=params.projection, seed=int(ctx.rng.integers(2**31)), progress=ctx.progress
    )
    model.set_bank(feats[chosen])
    return {
        "loss": [],
        "steps": len(images),
        "minutes": (time.monotonic() - start) / 60,
        "patches": len(feats),
        "bank": k,
        "coreset_minutes": (time.monotonic() - t0) / 60,
    }
