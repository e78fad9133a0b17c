"""Training EfficientAD (the paper's Algorithm 1) on good images: teacher frozen, student and autoencoder learnt.

Each step: the hard-feature loss (mean of the student-teacher squared differences above their 0.999 quantile), the
penalty (student outputs on a generic photograph pushed towards 0, so the student does not imitate the teacher
outside the training distribution), the autoencoder's regression of the teacher on an augmented image (brightness,
contrast or saturation x U(0.8, 1.2)) and the student's regression of the autoencoder. Afterwards the maps' 0.9 and
0.995 quantiles on held-out good images set the normalisation (the paper's validation images).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectors.efficientad.model import EfficientAd
from detectors.efficientad.teacher import (
    DistilSettings,
    TeacherError,
    cached_teacher,
    generic_images,
    load_teacher,
)
from detectors.registry import FitContext
from detectors.training import images_to_tensor, lr_factor, run_loop, start_fit

if TYPE_CHECKING:
    from detectors.efficientad import EfficientAdParams

Q_A, Q_B = 0.9, 0.995


def teacher_path(params: EfficientAdParams, channels: int, progress: bool) -> Path:
    """The teacher file: the given path, or the cached one for this backbone and width (distilled if missing)."""
    if params.teacher != "auto":
        return Path(params.teacher)
    settings = DistilSettings(
        backbone=params.backbone, channels=channels, width=params.teacher_width, steps=params.teacher_steps
    )
    return cached_teacher(settings, progress=progress)


def load_into(model: EfficientAd, path: Path) -> dict[str, Any]:
    """Load a teacher file into the model's teacher, refusing one made for another backbone or shape."""
    payload = load_teacher(path)
    want = {"backbone": model.backbone_name, "channels": model.channels}
    got = {"backbone": payload["backbone"], "channels": int(payload["settings"]["channels"])}
    if want != got or int(payload["settings"]["width"]) != model.teacher.body[0].out_channels:
        msg = (
            f"teacher {path} was distilled for {got} width {payload['settings']['width']}, the detector needs "
            f"{want} width {model.teacher.body[0].out_channels} (set backbone / channels / teacher_width to match)"
        )
        raise TeacherError(msg)
    model.teacher.load_state_dict(payload["state_dict"])
    return payload


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The paper's autoencoder augmentation: one of brightness, contrast, saturation, factor U(0.8, 1.2)."""
    f = float(rng.uniform(0.8, 1.2))
    kind = int(rng.integers(3))
    grey = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if kind == 0:
        out = x * f
    elif kind == 1:
        out = (x - grey.mean((2, 3), keepdim=True)) * f + grey.mean((2, 3), keepdim=True)
    else:
        out = grey + (x - grey) * f
    return out.clamp(0, 1)


def penalty_crops(size: tuple[int, int]) -> list[torch.Tensor]:
    """Generic photographs as RGB [0, 1] tensors at least `size` large (resized up where smaller)."""
    out = []
    for im in generic_images():
        h, w = im.shape[:2]
        f = max(size[0] / h, size[1] / w, 1.0)
        t = images_to_tensor(im[None], None)
        if f > 1:
            t = F.interpolate(t, size=(int(np.ceil(h * f)), int(np.ceil(w * f))), mode="bilinear", align_corners=False)
        out.append(t)
    return out


def fit(model: nn.Module, images: np.ndarray, params: EfficientAdParams, ctx: FitContext) -> dict[str, Any]:
    """Load the teacher, train student and autoencoder, set the map quantiles; returns the training log."""
    net, data = start_fit(model, EfficientAd, "efficientad", images)
    rng, device = ctx.rng, ctx.device
    path = teacher_path(params, net.channels, ctx.progress)
    teacher = load_into(net, path)
    net.to(device)
    c = net.channels
    order = rng.permutation(len(data))
    n_hold = int(round(params.holdout * len(data))) if len(data) > 1 else 0
    n_hold = min(max(n_hold, 1 if params.holdout > 0 and len(data) > 1 else 0), len(data) - 1)
    held, train = data[order[:n_hold]], data[order[n_hold:]]
    if n_hold == 0:
        held = train
    penalties = penalty_crops(net.input_size) if params.penalty else []

    for p in net.teacher.parameters():
        p.requires_grad_(False)
    net.teacher.eval()
    with torch.no_grad():
        outs = torch.cat([net.teacher(net.prepare(train[i : i + 8].to(device))) for i in range(0, len(train), 8)])
        net.teacher_mean.copy_(outs.mean((0, 2, 3), keepdim=True)[0:1])
        net.teacher_std.copy_(outs.std((0, 2, 3), keepdim=True).clamp_min(1e-6)[0:1])
    learnt = [*net.student.parameters(), *net.autoencoder.parameters()]
    opt = torch.optim.Adam(learnt, lr=params.lr, weight_decay=1e-5)
    net.student.train()
    net.autoencoder.train()
    h, w = net.input_size

    def step_fn(step: int, fraction: float) -> float:
        for group in opt.param_groups:
            group["lr"] = params.lr * lr_factor(step, fraction, params.schedule)
        x = train[rng.integers(len(train), size=params.batch_size)].to(device)
        xn = net.prepare(x)
        with torch.no_grad():
            t = net.teacher_features(xn)
        d = (t - net.student(xn)[:, :c]) ** 2
        hard = torch.quantile(d.detach().flatten()[: 2**24], params.hard_quantile)
        loss = d[d >= hard].mean()
        if penalties:
            src = penalties[int(rng.integers(len(penalties)))]
            y0 = int(rng.integers(src.shape[-2] - h + 1))
            x0 = int(rng.integers(src.shape[-1] - w + 1))
            pn = net.prepare(src[..., y0 : y0 + h, x0 : x0 + w].to(device))
            loss = loss + (net.student(pn)[:, :c] ** 2).mean()
        xa = net.prepare(augment(x, rng))
        ae = net.autoencoder(xa)
        with torch.no_grad():
            ta = net.teacher_features(xa)
        loss = loss + ((ta - ae) ** 2).mean() + ((ae - net.student(xa)[:, c:]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    log = run_loop(step_fn, steps=params.steps, max_minutes=ctx.max_minutes, progress=ctx.progress, desc="efficientad")
    net.eval()
    with torch.no_grad():
        maps = [net.raw_maps(net.prepare(held[i : i + 8].to(device))) for i in range(0, len(held), 8)]
    q = []
    for part in (0, 1):
        values = torch.cat([m[part].flatten() for m in maps]).double().cpu().numpy()
        qa, qb = np.quantile(values, [Q_A, Q_B])
        q += [float(qa), float(max(qb, qa + 1e-6))]
    net.quantiles.copy_(torch.tensor(q))
    log.update(teacher=str(path), teacher_loss=teacher.get("loss_last"), held_out=int(n_hold))
    return log
