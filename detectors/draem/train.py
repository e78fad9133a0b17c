"""Fit DRAEM on good images with synthetic anomalies: L2 + SSIM reconstruction loss, focal segmentation loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.draem.model import Draem
from detectors.draem.synth import synthesize
from detectors.registry import FitContext
from detectors.ssim_ae.model import SSIMMap
from detectors.training import lr_factor, run_loop, sample_batch, start_fit

if TYPE_CHECKING:
    from detectors.draem import DraemParams


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) for two-class segmentation; target (B, H, W) in {0, 1}."""
    logp = F.log_softmax(logits, dim=1).gather(1, target.long().unsqueeze(1)).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def make_batch(
    clean: torch.Tensor, sources: np.ndarray, rng: np.random.Generator, params: DraemParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise anomalies into a batch of clean crops: returns (augmented (B,3,h,w), mask (B,h,w))."""
    imgs, masks = [], []
    for t in clean.numpy().transpose(0, 2, 3, 1):
        img, mask = synthesize(
            np.ascontiguousarray(t),
            sources,
            rng,
            p_anomaly=params.p_anomaly,
            p_geometric=params.p_geometric,
            p_line=params.p_line,
            p_self=params.p_self,
            p_procedural=params.p_procedural,
        )
        imgs.append(img)
        masks.append(mask)
    aug = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())
    return aug, torch.from_numpy(np.stack(masks))


def fit(model: nn.Module, images: np.ndarray, params: DraemParams, ctx: FitContext) -> dict[str, Any]:
    """Train `model` (a Draem) on good images; returns {"loss": [...], "steps": N, "minutes": m}."""
    net, data = start_fit(model, Draem, "draem", images)
    rng, device = ctx.rng, ctx.device
    sources = np.ascontiguousarray(data.numpy().transpose(0, 2, 3, 1))
    ssim = SSIMMap(11, 1.5, 3).to(device)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=params.lr)

    def step_fn(step: int, fraction: float) -> float:
        for group in opt.param_groups:
            group["lr"] = params.lr * lr_factor(step, fraction, params.schedule)
        clean = sample_batch(data, rng, params.batch_size, params.crop_size, flip=params.flip, jitter=0.0)
        aug, mask = make_batch(clean, sources, rng, params)
        clean, aug, mask = clean.to(device), aug.to(device), mask.to(device)
        recon, seg = net.logits(aug)
        clean = net.shrink(clean)
        loss_rec = F.mse_loss(recon, clean) + (1.0 - ssim(recon, clean)).mean()
        loss = loss_rec + params.focal_weight * focal_loss(seg, mask, params.focal_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=int(params.steps), max_minutes=ctx.max_minutes, progress=ctx.progress, desc="draem")
    net.eval()
    return log
