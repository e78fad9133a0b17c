"""Self-supervised deep metric learning: an EfficientNet-Lite fine-tuned to tell good parts from synthetic defects.

Training (train.py) teaches the network `normal` against `line` (and `distortion`) with an angular-margin head
(ArcFace or AdaCos), so good parts gather tightly on the unit sphere and defect-like changes move an image away.
At inference the head is not needed for the score: the image's normalised embedding (global average of the last
feature map) is compared with the embeddings of the good training images, a bank held in the graph, and the score is
one minus the mean cosine similarity of the k nearest (cosine k-NN).

The map is the class-activation map (CAM, Zhou et al. 2016) of the anomaly classes on the last feature map, in the
graph. Grad-CAM needs gradients, which an inference graph does not have; it is not needed here: the head is linear
(cosine) over a global average, so a class's logit is exactly the average over locations of
cam_c(x, y) = w_c . f(x, y) / |g| (w_c the unit class weight, g the pooled feature). The map is
max over anomaly classes of cam_c - cam_normal: where the evidence for a defect class beats the evidence for
`normal`; its mean over the feature map equals the classifier's margin. (Grad-CAM's channel weights for this head are
w_c up to one location-independent term from the normalisation, which only makes its map sum to zero.) It is
upsampled to the input size and put on the score's scale (detectors/mapscale.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detectors.maps import upsample
from detectors.registry import DetectorOutput
from detectors.trunk import EfficientNetTrunk

SELF_MATCH = 1.0 - 1e-5  # a bank entry this similar is the input itself (a training image): skipped


class MetricNet(nn.Module):
    """forward(x RGB [0, 1]) -> (score (B,) cosine k-NN distance to the good bank, anomaly_map (B, 1, H, W) CAM)."""

    bank: torch.Tensor
    map_scale: torch.Tensor

    def __init__(self, backbone: str, classes: int, k: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.k = int(k)
        self.trunk = EfficientNetTrunk(backbone, 8)
        d = self.trunk.channels
        self.class_weight = nn.Parameter(torch.randn(classes, d) * 0.01)
        # Unit embeddings of the good training images; its length is set by fit (or by the checkpoint loaded).
        self.register_buffer("bank", torch.zeros(self.k, d))
        self.register_buffer("map_scale", torch.tensor([1.0, 0.0]))

    def set_bank(self, embeddings: torch.Tensor) -> None:
        """Store unit embeddings (N, d) as the bank; N must be at least k."""
        if len(embeddings) < self.k:
            msg = f"metric: k = {self.k} needs at least {self.k} good training images, found {len(embeddings)}"
            raise ValueError(msg)
        self.bank = F.normalize(embeddings.detach().float(), dim=1).to(self.bank.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the bank at the size the checkpoint holds (the number of training images it was fitted on)."""
        bank = state_dict.get(prefix + "bank")
        if bank is not None:
            self.bank = torch.empty_like(bank, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last feature map (B, d, h, w) and its global average (B, d)."""
        f = self.trunk(x)
        return f, f.mean(dim=(2, 3))

    def cosine(self, g: torch.Tensor) -> torch.Tensor:
        """Cosine between pooled features and the class weights, (B, classes): the head's logits before scaling."""
        return F.normalize(g, dim=1) @ F.normalize(self.class_weight, dim=1).t()

    def cam(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Per-location cosine contributions (B, classes, h, w); their mean over locations is `cosine(g)`."""
        w = F.normalize(self.class_weight, dim=1)
        return torch.einsum("bdhw,cd->bchw", f, w) / g.norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    def knn_distance(self, g: torch.Tensor) -> torch.Tensor:
        """1 - mean cosine similarity of the k nearest bank entries (B,); an entry identical to the input is skipped."""
        sim = F.normalize(g, dim=1) @ self.bank.t()
        sim = sim - 4.0 * (sim >= SELF_MATCH).to(sim.dtype)
        return 1.0 - torch.topk(sim, self.k, dim=1).values.mean(dim=1)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score (B,) and the unscaled CAM contrast (B, 1, h, w) at the feature stride."""
        f, g = self.embed(x)
        cam = self.cam(f, g)
        contrast = (cam[:, 1:] - cam[:, :1]).amax(dim=1, keepdim=True)
        return self.knn_distance(g), contrast

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Raw image score (B,) and anomaly map (B, 1, H, W) at input size, on the score's scale."""
        score, contrast = self.raw(x)
        return DetectorOutput(
            score,
            upsample(contrast * self.map_scale[0] + self.map_scale[1], self.input_size),
        )
