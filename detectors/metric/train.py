"""Training the metric detector: good images against synthetic `line` / `distortion` classes placed on the part.

Per step, a batch of training images gets random class labels; `line` and `distortion` samples are drawn on the
image's part mask (part.py, synth.py). The ImageNet trunk is fine-tuned from block `freeze_blocks` on (earlier
blocks stay frozen, and batch-norm statistics are kept: batches of 16 are too small to re-estimate them), through an
ArcFace or AdaCos head. After training, the bank of unit embeddings of the clean training images goes into the
model, and the CAM map is put on the score's scale (the training images' scores are leave-one-out: each image's own
bank entry is skipped, see model.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn

from detectors.mapscale import fit_map_scale
from detectors.metric.heads import make_head
from detectors.metric.model import MetricNet
from detectors.metric.part import find_parts
from detectors.metric.synth import synthesize
from detectors.registry import FitContext
from detectors.scoring import to_tensor
from detectors.training import check_model, lr_factor, run_loop

if TYPE_CHECKING:
    from detectors.metric import MetricParams


def fit(model: nn.Module, images: np.ndarray, params: MetricParams, ctx: FitContext) -> dict[str, Any]:
    """Fine-tune `model` (a MetricNet) on good images + synthetic classes, then fill its bank; returns the log."""
    model = check_model(model, MetricNet, "metric")
    rng, device = ctx.rng, ctx.device
    h, w = model.input_size
    if images.shape[1:3] != (h, w):
        images = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA) for im in images])
    model.trunk.load_weights(params.weights)
    model.to(device)
    parts = find_parts(images)
    frozen = [model.trunk._conv_stem, model.trunk._bn0, *model.trunk._blocks[: params.freeze_blocks]]
    for module in frozen:
        module.requires_grad_(False)
    trunk_params = [p for p in model.trunk.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": trunk_params, "lr": params.lr}, {"params": [model.class_weight], "lr": params.lr * 10}],
        weight_decay=1e-4,
    )
    base_lrs = [group["lr"] for group in opt.param_groups]
    head = make_head(params.head, params.classes, params)

    def step_fn(step: int, fraction: float) -> float:
        for group, base in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = base * lr_factor(step, fraction, params.schedule)
        idx = rng.integers(len(images), size=params.batch_size)
        labels = rng.integers(params.classes, size=params.batch_size)
        x = np.stack([synthesize(images[i], parts[i], int(y), rng) for i, y in zip(idx, labels, strict=True)])
        if params.flip:
            flips = rng.random(params.batch_size) < 0.5
            x[flips] = x[flips, :, ::-1]
        model.trunk.eval()  # frozen batch-norm statistics (see module docstring)
        _, g = model.embed(to_tensor(x, device))
        loss = head(model.cosine(g), torch.from_numpy(labels).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=params.steps, max_minutes=ctx.max_minutes, progress=ctx.progress, desc="metric")
    model.requires_grad_(True)
    model.eval()
    batches = [images[i : i + 16] for i in range(0, len(images), 16)]
    with torch.no_grad():
        model.set_bank(torch.cat([model.embed(to_tensor(b, device))[1] for b in batches]))
        raw = [model.raw(to_tensor(b, device)) for b in batches]
    scores = torch.cat([s for s, _ in raw]).double().cpu().numpy()
    a, b = fit_map_scale(scores, torch.cat([m for _, m in raw]).double().cpu().numpy())
    model.map_scale.copy_(torch.tensor([a, b]))
    log["part_share"] = float(np.mean([p.mean() for p in parts]))
    return log
