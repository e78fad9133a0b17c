"""`inspectd export`: checkpoint -> model bundle (ONNX + bundle.json), and optionally a TensorRT engine.

    inspectd export --ckpt CKPT --out BUNDLE_DIR [--name N] [--opset 17]
    inspectd export --out BUNDLE_DIR --engine [--precision fp16|int8] [--max-batch N]   (GPU box)

torch and TensorRT are imported inside `run`, so `inspectd --help` works without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.bundle import BUNDLE_JSON, load_bundle
from edge.contract import OPSET
from edge.errors import BundleError, MissingExtraError

MAX_BATCH = 64  # model.max_batch's upper bound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `inspectd export`."""
    parser.add_argument(
        "--ckpt", type=Path, help="checkpoint written by `inspectd train` (omit with --engine to reuse --out)"
    )
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (or, with --engine, to read)")
    parser.add_argument("--name", help="bundle name (default: the folder name)")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--datasets", type=Path, default=Path("var/datasets"), help="where category test sets live")
    parser.add_argument("--engine", action="store_true", help="also build a TensorRT engine (GPU box only)")
    parser.add_argument("--precision", choices=("fp16", "int8"), default="fp16", help="engine precision")
    parser.add_argument("--max-batch", type=_batch, default=1, help="largest batch in the engine's profile")
    parser.add_argument("--cuda", choices=("cuda-python", "pycuda"), default="cuda-python",
                        help="CUDA library that reads the GPU's facts for bundle.json (as model.cuda)")


def run(args: argparse.Namespace) -> int:
    """Export (when --ckpt is given), then build the engine (when --engine is given)."""
    if args.ckpt is None and not args.engine:
        msg = "nothing to do: give --ckpt CKPT to export, or --engine to build an engine for the bundle in --out"
        raise BundleError(msg)
    if args.ckpt is not None:
        _export(args)
    if args.engine:
        return _engine(args)
    return 0


def _export(args: argparse.Namespace) -> None:
    from detectors.checkpoint import CheckpointError, load  # torch: only now
    from export.build import ExportError, export_bundle

    if not args.ckpt.is_file():
        msg = f"checkpoint {args.ckpt} not found"
        raise BundleError(msg)
    try:
        model, meta = load(args.ckpt, device="cpu")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    bundle, report = export_bundle(model, meta, args.out, name=args.name, opset=args.opset, datasets_root=args.datasets)
    t = bundle.meta.thresholds
    print(f"parity ok: {report.describe()}")
    print(
        f"bundle {args.out}: {bundle.meta.detector} {bundle.meta.input.width}x{bundle.meta.input.height} "
        f"{bundle.meta.input.color_order}, opset {bundle.meta.opset}, model.onnx {bundle.short_hash}; "
        f"thresholds {t.method} (image {t.image:.4g}, pixel {t.pixel:.4g}, offset {t.offset:.4g}) — "
        f"run `inspectd calibrate --bundle {args.out} --good DIR` before production"
    )


def _engine(args: argparse.Namespace) -> int:
    if not (args.out / BUNDLE_JSON).is_file():
        msg = f"--engine needs a bundle in {args.out}: export one first (--ckpt CKPT)"
        raise BundleError(msg)
    load_bundle(args.out)  # hashes checked before we spend minutes building
    try:
        from export.engine import build_engine
    except ImportError as exc:
        msg = f"--engine needs TensorRT and a CUDA GPU, which this machine lacks ({exc}); run it on the GPU box"
        raise MissingExtraError(msg) from None

    engine = build_engine(args.out, precision=args.precision, max_batch=args.max_batch, cuda=args.cuda)
    info = load_bundle(args.out).meta.engine
    detail = (
        f" ({info.precision}, TensorRT {info.tensorrt_version}, {info.gpu_name} sm {info.compute_capability}, "
        f"batch {info.min_batch}-{info.max_batch})"
        if info
        else ""
    )
    print(f"engine {engine} written{detail}")
    return 0


def _batch(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BATCH:
        msg = f"must be 1..{MAX_BATCH}, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value
