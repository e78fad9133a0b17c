"""Run a detector on uint8 BGR images: the one place images become model input in torch (train, evaluate)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> float32 RGB NCHW in [0, 1], the input every detector's forward takes."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        msg = f"expected uint8 images of shape (N, H, W, 3), found {images.dtype} {images.shape}"
        raise ValueError(msg)
    x = torch.from_numpy(np.ascontiguousarray(images[..., ::-1])).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def predict(model: nn.Module, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores (N,) and anomaly maps (N, H, W), float32, with the model in eval mode and no grad."""
    model.eval()
    device = next((p.device for p in model.parameters()), None) or next(
        (b.device for b in model.buffers()), torch.device("cpu")
    )
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            score, amap = model(to_tensor(images[i : i + batch_size], device))
            scores.append(score.float().cpu().numpy())
            maps.append(amap[:, 0].float().cpu().numpy())
    return np.concatenate(scores), np.concatenate(maps)
