"""`inspectd train`: fit a detector on a category's good training images and save a checkpoint.

Seeded (Python, numpy, torch), so the same data, seed and params give the same model on the same machine. The
checkpoint also carries provisional thresholds from the training images (see detectors/checkpoint.py).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors import registry
from edge.errors import InspectdError
from edge.evaluation.dataset import list_images, read_image, tree_hash


class TrainError(InspectdError):
    """Raised when training cannot start: missing options, no CUDA when asked for it (bad params: DetectorError)."""

    exit_code = 2


@dataclass
class TrainResult:
    """What a training run produced (the CLI prints it, the benchmark tabulates it)."""

    checkpoint: Path
    log: dict
    provisional: dict
    images: int


def pick_device(name: str | None):
    """`cuda` when asked for or available, else `cpu`; asking for CUDA on a box without it is an error."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: no CUDA device is available here (torch.cuda.is_available() is False)"
        raise TrainError(msg)
    return torch.device(name)


def train_detector(
    detector: str,
    data: Path,
    out: Path,
    *,
    size: int = 256,
    seed: int = 0,
    max_minutes: float | None = None,
    device: str | None = None,
    params: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `detector` on `data`/train/good at size x size and save the checkpoint to `out`."""
    from detectors.checkpoint import CheckpointMeta, provisional_thresholds, save
    from detectors.scoring import predict

    registry.get(detector).make_params(params)  # unknown detector or bad params: fail before reading images
    paths = list_images(Path(data) / "train" / "good")
    images = np.stack([read_image(p, (size, size)) for p in paths])
    start = time.monotonic()
    model, checked, log = registry.train(
        detector,
        images,
        params,
        (size, size),
        seed=seed,
        device=pick_device(device),
        max_minutes=max_minutes,
        progress=progress,
    )
    minutes = (time.monotonic() - start) / 60
    scores, maps = predict(model, images)
    provisional = provisional_thresholds(scores, maps)
    losses = [float(v) for v in log.get("loss", [])]
    meta = CheckpointMeta(
        detector=detector,
        params=checked.model_dump(),
        input_size=(size, size),
        training={"category": str(data), "images": len(paths), "hash": tree_hash(paths), "seed": seed},
        provisional=provisional,
        metrics={
            "train_minutes": float(log.get("minutes", minutes)),
            "train_steps": int(log.get("steps", 0)),
            "final_loss": losses[-1] if losses else float("nan"),
        },
    )
    save(out, model, meta)
    return TrainResult(checkpoint=Path(out), log=log, provisional=provisional, images=len(paths))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the train options."""
    parser.add_argument("--detector", required=True, choices=registry.names(), help="which detector to train")
    parser.add_argument(
        "--help-params", action="store_true", help="list the detector's parameters (type, default, range) and exit"
    )
    parser.add_argument("--data", type=Path, help="category folder (MVTec layout: train/good/*.png); required")
    parser.add_argument("--out", type=Path, help="checkpoint file to write (.pt); required")
    parser.add_argument("--size", type=int, default=256, help="square input size the model is built for (px)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every RNG (reproducible training)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall-clock budget")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when present, else cpu")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a detector parameter (repeatable), e.g. --param backbone=resnet18",
    )


def run(args: argparse.Namespace) -> int:
    """Train and report where the checkpoint went (or, with --help-params, list the parameters)."""
    detector = registry.get(args.detector)
    if args.help_params:
        print(registry.describe_params(detector))
        return 0
    if args.data is None or args.out is None:
        msg = "inspectd train: --data and --out are required (only --help-params runs without them)"
        raise TrainError(msg)
    params = registry.parse_assignments(detector, args.param)
    result = train_detector(
        args.detector,
        args.data,
        args.out,
        size=args.size,
        seed=args.seed,
        max_minutes=args.max_minutes,
        device=args.device,
        params=params,
    )
    p = result.provisional
    print(
        f"{args.detector} trained on {result.images} images of {args.data} in {result.log.get('minutes', 0):.2f} min "
        f"({result.log.get('steps', 0)} steps); checkpoint {result.checkpoint}; provisional thresholds "
        f"offset {p['offset']:.4g} image {p['image']:.4g} pixel {p['pixel']:.4g}"
    )
    return 0
