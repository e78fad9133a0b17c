"""Checkpoints: a plain dict of tensors and JSON-like metadata, so `torch.load(weights_only=True)` reads it.

A checkpoint holds the state dict (normalisation stats and fitted statistics are buffers in it), the detector name
and params to rebuild the module through the registry, the input size, a summary of the training data, and
provisional raw thresholds from the training images. Export uses the provisional thresholds until `inspectd
calibrate` sets proper ones from held-out good images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors import registry

FORMAT_VERSION = 1
IMAGE_MARGIN = 1.1  # training images are in-sample: unseen good ones score higher
PIXEL_QUANTILE = 0.999


class CheckpointError(ValueError):
    """Raised when a checkpoint file is missing, not ours, or names a detector that is not registered."""


@dataclass
class CheckpointMeta:
    """Everything but the weights. `provisional` = {"offset", "image", "pixel"} raw thresholds from training images."""

    detector: str
    params: dict
    input_size: tuple[int, int]
    training: dict = field(default_factory=dict)  # {"category", "images", "hash"}
    provisional: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def provisional_thresholds(scores: np.ndarray, maps: np.ndarray) -> dict:
    """Raw thresholds from good training images' scores and maps.

    offset = median training map value (a typical good pixel maps to 0.0); image = offset + 1.1 x (largest training
    score - offset); pixel = offset + 1.1 x (99.9 % quantile of training map values - offset).
    """
    values = maps.reshape(-1).astype(np.float64)
    offset = float(np.median(values))
    top = float(np.max(scores))
    image = offset + IMAGE_MARGIN * max(top - offset, 1e-6 * max(abs(offset), 1.0))
    q = float(np.quantile(values, PIXEL_QUANTILE))
    pixel = offset + IMAGE_MARGIN * max(q - offset, 1e-6 * max(abs(offset), 1.0))
    return {"offset": offset, "image": image, "pixel": pixel}


def save(path: Path | str, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write the checkpoint; tensors are moved to the CPU so it loads anywhere."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "detector": meta.detector,
        "params": dict(meta.params),
        "input_size": [int(v) for v in meta.input_size],
        "training": dict(meta.training),
        "provisional": {k: float(v) for k, v in meta.provisional.items()},
        "metrics": dict(meta.metrics),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load(path: Path | str, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Read a checkpoint with `weights_only=True`, rebuild the module via the registry, load weights, eval()."""
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoint {path} not found"
        raise CheckpointError(msg)
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload or "detector" not in payload:
        msg = f"{path} is not an inspectd checkpoint (expected a dict with detector and state_dict)"
        raise CheckpointError(msg)
    meta = CheckpointMeta(
        detector=str(payload["detector"]),
        params=dict(payload["params"]),
        input_size=(int(payload["input_size"][0]), int(payload["input_size"][1])),
        training=dict(payload.get("training", {})),
        provisional=dict(payload.get("provisional", {})),
        metrics=dict(payload.get("metrics", {})),
    )
    try:
        model = registry.build(meta.detector, meta.params, meta.input_size)
    except registry.DetectorError as exc:
        msg = f"checkpoint {path}: {exc}"
        raise CheckpointError(msg) from None
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), meta
