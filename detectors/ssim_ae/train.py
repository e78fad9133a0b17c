"""Fit the SSIM autoencoder on good images: random crops, light augmentation, SSIM (or L2) reconstruction loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from detectors.registry import FitContext
from detectors.ssim_ae.model import SSIMAutoencoder
from detectors.training import lr_factor, run_loop, sample_batch, start_fit

if TYPE_CHECKING:
    from detectors.ssim_ae import SSIMAEParams


def fit(model: nn.Module, images: np.ndarray, params: SSIMAEParams, ctx: FitContext) -> dict[str, Any]:
    """Train `model` (an SSIMAutoencoder) on good images; returns {"loss": [...], "steps": N, "minutes": m}."""
    ae, data = start_fit(model, SSIMAutoencoder, "ssim_ae", images)
    rng, device = ctx.rng, ctx.device
    ae.to(device).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps = int(params.steps)

    def step_fn(step: int, fraction: float) -> float:
        for group in opt.param_groups:
            group["lr"] = params.lr * lr_factor(step, fraction, params.schedule)
        x = sample_batch(
            data, rng, params.batch_size, params.crop_size, flip=params.flip, jitter=params.jitter
        ).to(device)
        g = ae.prepare(x)
        recon = ae.reconstruct(g)
        loss = ((g - recon) ** 2).mean()
        if ae.residual == "ssim":
            # The L2 term pulls the reconstruction off its flat start, where SSIM's gradient is tiny.
            loss = (1.0 - ae.ssim(g, recon)).mean() + params.l2_weight * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=steps, max_minutes=ctx.max_minutes, progress=ctx.progress, desc="ssim_ae")
    ae.eval()
    return log
