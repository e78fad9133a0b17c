"""Fitting PaDiM: one pass over the good images accumulating per-patch first and second moments.

With ~100 training images and d = 100 channels a per-patch covariance is rank-deficient, so each patch also pools
the samples of its `neighbourhood` (radius in patches; 1 = 3x3): 9x the samples, and tolerance to small shifts. The
covariance is regularised by `eps` times its mean variance and inverted through a Cholesky factor (torch 2.14's
batched `linalg.inv` is broken for batches of 8 or more).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.padim.model import Padim
from detectors.progress import Progress
from detectors.registry import FitContext
from detectors.scoring import to_tensor
from detectors.training import check_model

if TYPE_CHECKING:
    from detectors.padim import PadimParams


def cholesky_inverse(cov: torch.Tensor) -> torch.Tensor:
    """Inverse of a batch of symmetric positive-definite matrices (..., d, d) via Cholesky."""
    chol = torch.linalg.cholesky(cov)
    return torch.cholesky_inverse(chol)


def fit(model: nn.Module, images: np.ndarray, params: PadimParams, ctx: FitContext) -> dict:
    """Set the model's per-patch mean and inverse covariance from good images; returns the training log."""
    model = check_model(model, Padim, "padim")
    start = time.monotonic()
    device, max_minutes, progress = ctx.device, ctx.max_minutes, ctx.progress
    model.backbone.load_weights(params.weights)
    model.to(device).eval()
    radius = params.neighbourhood
    shared = params.shared
    batch = params.batch_size
    n_seen = 0
    s1 = s2 = n = None
    bar = Progress(len(images), "padim features", unit="image", enabled=progress)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            emb = model.features(to_tensor(images[i : i + batch], device)).double()  # (B, d, gh, gw)
            b, d, gh, gw = emb.shape
            if shared:
                x = emb.permute(0, 2, 3, 1).reshape(1, b * gh * gw, d)
                count = torch.full((1,), float(b * gh * gw), dtype=emb.dtype, device=emb.device)
            else:
                # Each patch's samples: its k x k neighbourhood in every image (zero padding counted out below).
                k = 2 * radius + 1
                x = F.unfold(emb, k, padding=radius).reshape(b, d, k * k, gh * gw).permute(3, 0, 2, 1)
                x = x.reshape(gh * gw, b * k * k, d)  # (P, samples, d)
                ones = torch.ones(1, 1, gh, gw, dtype=emb.dtype, device=emb.device)
                count = F.unfold(ones, k, padding=radius).sum(1).flatten() * b  # (P,)
            first = x.sum(1)  # (P, d)
            second = torch.bmm(x.transpose(1, 2), x)  # (P, d, d)
            s1 = first if s1 is None else s1 + first
            s2 = second if s2 is None else s2 + second
            n = count if n is None else n + count
            n_seen += b
            bar.update(b)
            if max_minutes is not None and (time.monotonic() - start) / 60 > max_minutes:
                break
    if s1 is None or s2 is None or n is None:
        msg = "padim fit needs at least one training image"
        raise ValueError(msg)
    mean = s1 / n.view(-1, 1)
    cov = s2 / n.view(-1, 1, 1) - mean.unsqueeze(2) * mean.unsqueeze(1)
    d = cov.shape[-1]
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (P,)
    cov = cov + params.eps * scale.view(-1, 1, 1) * torch.eye(d, dtype=cov.dtype, device=cov.device)
    inv = cholesky_inverse(cov)
    model.mean.copy_(mean.float())
    model.inv_cov.copy_(inv.float())
    with torch.no_grad():
        emb = model.features(to_tensor(images[: min(len(images), batch)], device))
        loss = float((model.distance(emb) ** 2).mean().cpu()) / d  # ~1 in-sample: a sanity figure, not a loss
    bar.update(0, loss=loss)
    bar.close()
    return {"loss": [loss], "steps": n_seen, "minutes": (time.monotonic() - start) / 60}
