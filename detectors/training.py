"""What every detector's training shares.

Seeding (called once, by `detectors.registry.train`), image conversion, crop sampling, the LR schedule, a
step- or wall-clock-bounded loop with progress, and `start_fit`, the common start of each `fit`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import cv2
import numpy as np
import torch
from torch import nn

from detectors.progress import Progress

M = TypeVar("M", bound=nn.Module)
Schedule = Literal["cosine", "constant"]  # see lr_factor


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return the numpy generator training draws from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # autotuned CUDA kernels differ run to run
    torch.backends.cudnn.deterministic = True
    return np.random.default_rng(seed)


def images_to_tensor(images: np.ndarray, size: tuple[int, int] | None) -> torch.Tensor:
    """BGR uint8 (N, H, W, 3) -> RGB float32 (N, 3, h, w) in [0, 1], resized (INTER_AREA) to size=(h, w) if given."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        msg = f"training images must be uint8 BGR (N, H, W, 3), found {images.dtype} {images.shape}"
        raise ValueError(msg)
    if len(images) == 0:
        msg = "no training images: need at least one good image"
        raise ValueError(msg)
    if size is not None and tuple(images.shape[1:3]) != tuple(size):
        images = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in images])
    rgb = np.ascontiguousarray(images[..., ::-1].transpose(0, 3, 1, 2))
    return torch.from_numpy(rgb).float().div_(255.0)


def sample_batch(
    data: torch.Tensor, rng: np.random.Generator, batch: int, crop: int, *, flip: bool, jitter: float
) -> torch.Tensor:
    """Random crops (crop x crop, or the whole image if smaller) with optional flips and brightness/contrast jitter."""
    n, _, h, w = data.shape
    ch, cw = min(crop, h), min(crop, w)
    out = []
    for _ in range(batch):
        i = int(rng.integers(n))
        y = int(rng.integers(h - ch + 1))
        x = int(rng.integers(w - cw + 1))
        t = data[i, :, y : y + ch, x : x + cw]
        if flip and rng.random() < 0.5:
            t = t.flip(-1)
        if flip and rng.random() < 0.5:
            t = t.flip(-2)
        if jitter > 0:
            gain = 1.0 + float(rng.uniform(-jitter, jitter))
            bias = float(rng.uniform(-jitter, jitter)) / 2
            t = ((t - 0.5) * gain + 0.5 + bias).clamp(0, 1)
        out.append(t)
    return torch.stack(out)


def lr_factor(step: int, fraction: float, schedule: str, warmup: int = 20) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then constant or cosine decay to 2 %.

    `fraction` is how much of the training budget is spent (steps or wall clock, whichever is further), so the
    cosine reaches its floor when a wall-clock budget ends: settled weights at the end of a short run.
    """
    warm = min(1.0, (step + 1) / warmup)
    if schedule == "constant":
        return warm
    if schedule != "cosine":
        msg = f"schedule must be 'cosine' or 'constant', found {schedule!r}"
        raise ValueError(msg)
    return warm * max(0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0))), 0.02)


def run_loop(
    step_fn: Callable[[int, float], float],
    *,
    steps: int,
    max_minutes: float | None,
    progress: bool,
    desc: str,
) -> dict[str, Any]:
    """Call step_fn(step, fraction) -> loss until `steps` or the wall-clock budget runs out; return the training log.

    `fraction` in [0, 1] is the share of the budget spent before this step. With a wall-clock budget it depends on
    machine speed, so only runs without `max_minutes` are bit-for-bit reproducible.
    """
    start = time.monotonic()
    budget_s = None if max_minutes is None else max_minutes * 60
    losses: list[float] = []
    done = 0
    with Progress(steps, desc, enabled=progress) as bar:
        for step in range(steps):
            elapsed = time.monotonic() - start
            fraction = step / steps
            if budget_s:
                fraction = max(fraction, elapsed / budget_s)
            loss = step_fn(step, fraction)
            losses.append(float(loss))
            done = step + 1
            bar.update(1, loss=float(np.mean(losses[-20:])))
            if budget_s is not None and time.monotonic() - start >= budget_s:
                break
    return {"loss": losses, "steps": done, "minutes": (time.monotonic() - start) / 60}


def check_model(model: nn.Module, expected: type[M], name: str) -> M:
    """`model` as `expected`, or a TypeError naming both (a fit handed another detector's module)."""
    if not isinstance(model, expected):
        msg = f"{name}.fit needs a {expected.__name__}, found {type(model).__name__}"
        raise TypeError(msg)
    return model


def start_fit(model: nn.Module, expected: type[M], name: str, images: np.ndarray) -> tuple[M, torch.Tensor]:
    """Check the model's type and convert the images at its input size (seeding is done once, by the registry)."""
    model = check_model(model, expected, name)
    return model, images_to_tensor(images, getattr(model, "input_size", None))
