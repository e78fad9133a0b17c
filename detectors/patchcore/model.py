"""PatchCore (Roth et al. 2022): distance of each patch feature to its nearest neighbour in a bank of good patches.

Features: the mid-level maps of a pretrained CNN (strides 8 and 16 by default), each averaged over its 3x3
neighbourhood (the paper's locally aware patches, p = 3), resampled to the finest chosen stride and concatenated.
The memory bank, a greedy k-center coreset of the training patches (coreset.py), is a buffer and so an ONNX
initializer: the nearest-neighbour search runs inside the graph in matmul form, |x|^2 + min(|m|^2 - 2 x.m), over
chunks of the bank (MatMul + ReduceMin), so ONNX Runtime and TensorRT run the same bundle. Map: the per-patch distance,
upsampled to the input size and Gaussian-smoothed; score: the largest patch distance (the paper's image score).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from detectors.backbones import FeatureExtractor, local_features
from detectors.maps import SeparableBlur, upsample
from detectors.registry import DetectorOutput

if TYPE_CHECKING:
    from detectors.patchcore import PatchCoreParams

STRIDES = (4, 8, 16)  # what FeatureExtractor returns


class PatchCore(nn.Module):
    """Nearest-neighbour distance to a memory bank; forward(x RGB [0, 1]) -> DetectorOutput(score, anomaly_map)."""

    bank: torch.Tensor
    bank_sq: torch.Tensor

    def __init__(self, params: PatchCoreParams, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.strides = tuple(sorted(set(params.strides)))
        stride = self.strides[0]
        h, w = input_size
        if h % max(self.strides) or w % max(self.strides):
            msg = f"patchcore input size must be a multiple of {max(self.strides)}, found {h}x{w}"
            raise ValueError(msg)
        self.input_size = (h, w)
        self.grid = (h // stride, w // stride)
        self.backbone = FeatureExtractor(params.backbone)
        self.layers = tuple(STRIDES.index(s) for s in self.strides)
        self.dim = sum(self.backbone.channels[i] for i in self.layers)
        self.neighbourhood = params.neighbourhood
        self.chunk = params.chunk
        self.blur = SeparableBlur(params.sigma)
        # Filled by fit; the size comes from the checkpoint when one is loaded (see _resize_bank).
        self.register_buffer("bank", torch.zeros(1, self.dim))
        self.register_buffer("bank_sq", torch.zeros(1))
        self._register_load_state_dict_pre_hook(self._resize_bank)

    def _resize_bank(self, state: dict[str, Any], prefix: str, *_: Any) -> None:
        for name in ("bank", "bank_sq"):
            stored = state.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))

    def set_bank(self, bank: torch.Tensor) -> None:
        """Install the memory bank (M, dim) and its squared norms."""
        bank = bank.detach().float().contiguous()
        self.bank = bank.to(self.bank.device)
        self.bank_sq = (self.bank * self.bank).sum(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features (B, dim, gh, gw)."""
        return local_features(self.backbone(x), self.layers, self.grid, self.neighbourhood)

    def nearest(self, patches: torch.Tensor) -> torch.Tensor:
        """Distance of each patch (B, P, dim) to its nearest bank row: (B, P), matmul form, chunked over the bank."""
        # min over m of |x|^2 - 2 x.m + |m|^2 = |x|^2 + min over m of (|m|^2 - 2 x.m): |x|^2 is added after the min,
        # and the -2 is folded into the bank constant, so the (B, P, M) tensor sees one MatMul, one Add and the min
        # (two full-size elementwise passes fewer; and an INT8 MatMul needs no Mul after it).
        best = None
        for start in range(0, self.bank.shape[0], self.chunk):
            bank = -2.0 * self.bank[start : start + self.chunk]
            low = (torch.matmul(patches, bank.t()) + self.bank_sq[start : start + self.chunk]).amin(-1)
            best = low if best is None else torch.minimum(best, low)
        assert best is not None
        return (best + (patches * patches).sum(-1)).clamp_min(0.0).sqrt()

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        """Score (B,) = largest patch distance; map (B, 1, H, W) = patch distances upsampled and smoothed."""
        emb = self.features(x)
        b = emb.shape[0]
        dist = self.nearest(emb.flatten(2).transpose(1, 2))  # (B, P)
        amap = self.blur(upsample(dist.reshape(b, 1, *self.grid), self.input_size))
        return DetectorOutput(dist.amax(1), amap)
