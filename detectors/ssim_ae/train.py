"""Fit the SSIM autoencoder on good images: random crops, light augmentation, SSIM (or L2) reconstruction loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detectors.ssim_ae.model import SSIMAutoencoder
from detectors.training import lr_factor, run_loop, sample_batch, start_fit


def fit(
    model: SSIMAutoencoder,
    images: np.ndarray,
    *,
    params: dict[str, Any],
    seed: int,
    max_minutes: float | None,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model` (an SSIMAutoencoder) on good images; returns {"loss": [...], "steps": N, "minutes": m}."""
    from detectors.ssim_ae import DEFAULTS

    params, rng, data = start_fit(model, SSIMAutoencoder, "ssim_ae", DEFAULTS, params, seed, images)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    steps = int(params["steps"])

    def step_fn(step: int, fraction: float) -> float:
        for group in opt.param_groups:
            group["lr"] = params["lr"] * lr_factor(step, fraction, params["schedule"])
        x = sample_batch(
            data, rng, params["batch_size"], params["crop_size"], flip=params["flip"], jitter=params["jitter"]
        ).to(device)
        g = model.prepare(x)
        recon = model.reconstruct(g)
        loss = ((g - recon) ** 2).mean()
        if model.residual == "ssim":
            # The L2 term pulls the reconstruction off its flat start, where SSIM's gradient is tiny.
            loss = (1.0 - model.ssim(g, recon)).mean() + params["l2_weight"] * loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=steps, max_minutes=max_minutes, progress=progress, desc="ssim_ae")
    model.eval()
    return log
