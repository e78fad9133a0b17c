"""Fit the SSIM autoencoder on good images: random crops, light augmentation, SSIM (or L2) reconstruction loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.registry import FitContext
from detectors.ssim_ae.model import SSIMAutoencoder
from detectors.training import lr_factor, run_loop, sample_batch, start_fit

if TYPE_CHECKING:
    from detectors.ssim_ae import SSIMAEParams


def fit(model: nn.Module, images: np.ndarray, params: SSIMAEParams, ctx: FitContext) -> dict[str, Any]:
    """Train `model` (an SSIMAutoencoder) on good images; returns {"loss": [...], "steps": N, "minutes": m}.

    Patches mode: random `patch` crops of the input-size images. Whole mode: the images resized to `patch`, with
    random rotations (`rotate`) and flips.
    """
    ae, data = start_fit(model, SSIMAutoencoder, "ssim_ae", images)
    rng, device = ctx.rng, ctx.device
    if ae.mode == "whole":
        data = F.interpolate(data, size=(ae.patch, ae.patch), mode="bilinear", align_corners=False)
    ae.to(device).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=params.lr, weight_decay=params.weight_decay)

    def step_fn(step: int, fraction: float) -> float:
        for group in opt.param_groups:
            group["lr"] = params.lr * lr_factor(step, fraction, params.schedule)
        x = sample_batch(data, rng, params.batch_size, ae.patch, flip=params.flip, jitter=params.jitter)
        if params.rotate > 0:
            x = rotate(x, rng.uniform(-params.rotate, params.rotate, len(x)))
        g = ae.prepare(x.to(device))
        recon = ae.reconstruct(g)
        loss = ((g - recon) ** 2).mean()
        if ae.residual == "ssim":
            loss = (1.0 - ae.ssim(g, recon)).mean() + params.l2_weight * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=params.steps, max_minutes=ctx.max_minutes, progress=ctx.progress, desc="ssim_ae")
    ae.eval()
    return log


def rotate(x: torch.Tensor, degrees: np.ndarray) -> torch.Tensor:
    """Rotate each image of a batch (B, C, H, W) about its centre; corners take the nearest border pixel."""
    theta = torch.from_numpy(np.deg2rad(degrees)).float()
    cos, sin = theta.cos(), theta.sin()
    zero = torch.zeros_like(cos)
    affine = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(affine, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
