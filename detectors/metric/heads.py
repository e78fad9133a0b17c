"""Angular-margin heads for training the metric detector: ArcFace (Deng et al. 2019) and AdaCos (Zhang et al. 2019).

Both take the cosines between normalised embeddings and normalised class weights (MetricNet.cosine) and return a
cross-entropy loss; they differ in how logits are scaled. Only training uses them: the exported graph scores by
k-NN over embeddings and maps by CAM, so neither head is in a bundle.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from detectors.metric import MetricParams


class ArcFace(nn.Module):
    """CE over s * cos(theta + m) for the true class, s * cos(theta) for the others (additive angular margin)."""

    def __init__(self, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        self.scale, self.margin = scale, margin
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        # Past theta = pi - m, cos(theta + m) stops decreasing; insightface's linear continuation keeps it monotonic.
        self.th, self.mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for cosines (B, C) and integer labels (B,)."""
        sine = (1.0 - cosine.pow(2)).clamp_min(1e-9).sqrt()
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        onehot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return F.cross_entropy(self.scale * (onehot * phi + (1 - onehot) * cosine), labels)


class AdaCos(nn.Module):
    """CE over s * cos(theta) with the scale s re-estimated every batch from the batch's own angles (no margin).

    The paper's fixed starting scale sqrt(2) log(C - 1) is 0 for C = 2 and ~1 for C = 3, and its update
    s = log(B_avg) / cos(min(pi/4, median theta_y)) turns negative once the few wrong classes are well separated
    (B_avg < 1): with two or three classes s is kept at `min_scale` or above.
    """

    def __init__(self, classes: int, min_scale: float = 10.0) -> None:
        super().__init__()
        self.min_scale = min_scale
        self.scale = max(math.sqrt(2.0) * math.log(max(classes - 1, 1)), min_scale)

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss for cosines (B, C) and integer labels (B,); updates the scale first (no gradient)."""
        with torch.no_grad():
            onehot = F.one_hot(labels, cosine.shape[1]).bool()
            others = torch.where(onehot, torch.zeros_like(cosine), torch.exp(self.scale * cosine))
            b_avg = others.sum(dim=1).mean()
            theta = torch.acos(cosine[onehot].clamp(-1 + 1e-7, 1 - 1e-7))
            new = torch.log(b_avg.clamp_min(1e-12)) / torch.cos(torch.clamp(theta.median(), max=math.pi / 4))
            self.scale = max(float(new), self.min_scale)
        return F.cross_entropy(self.scale * cosine, labels)


def make_head(name: str, classes: int, params: MetricParams) -> nn.Module:
    """The training head named by `--param head=`."""
    if name == "arcface":
        return ArcFace(params.arcface_scale, params.arcface_margin)
    if name == "adacos":
        return AdaCos(classes, params.adacos_min_scale)
    msg = f"metric: head must be 'arcface' or 'adacos', found {name!r}"
    raise ValueError(msg)
