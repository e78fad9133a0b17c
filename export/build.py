"""Checkpoint -> model bundle: export the wrapped graph, prove parity with torch, write bundle.json."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from torch import nn

from edge.bundle import (
    BUNDLE_JSON,
    EVIDENCE_PNG,
    SCHEMA_VERSION,
    Bundle,
    BundleMeta,
    InputSpec,
    Thresholds,
    TrainingSummary,
    write_bundle,
)
from edge.contract import OPSET
from edge.errors import InspectdError
from edge.log import get_logger
from export.graph import ExportWrapper, PostProcess, export_onnx
from export.parity import ParityReport, check_parity, parity_images
from export.trt_rules import check_trt_graph

log = get_logger(__name__)

PROVISIONAL_METHOD = "provisional: training images"


class ExportError(InspectdError):
    """Raised when a checkpoint cannot become a bundle: unreadable, bad thresholds, or ONNX disagrees with torch."""

    exit_code = 2


class CheckpointInfo(Protocol):
    """What export reads from `detectors.checkpoint.CheckpointMeta`."""

    detector: str
    params: dict
    input_size: tuple[int, int]
    training: dict
    provisional: dict
    metrics: dict


def export_bundle(
    model: nn.Module,
    meta: CheckpointInfo,
    out: Path,
    *,
    name: str | None = None,
    opset: int = OPSET,
    color_order: Literal["BGR", "RGB"] = "BGR",
    images: np.ndarray | None = None,
    datasets_root: Path = Path("var/datasets"),
) -> tuple[Bundle, ParityReport]:
    """Write `out`/model.onnx and bundle.json for a trained detector.

    Parity images are `images` if given, else 16 from the checkpoint's category test set, else synthetic ones.
    A previous bundle in `out` is replaced; its INT8 flavours and engine are removed, since they belong to the old
    model.

    Raises:
        ExportError: the provisional thresholds are unusable, or ONNX Runtime disagrees with torch.
    """
    out = Path(out)
    height, width = (int(v) for v in meta.input_size)
    thresholds = _provisional_thresholds(meta.provisional)
    wrapper = ExportWrapper(
        model.eval(), PostProcess(thresholds.offset, thresholds.image, thresholds.pixel), color_order
    ).eval()
    if images is None:
        images, source = parity_images(
            str(meta.training.get("category", "")), (height, width), datasets_root=datasets_root
        )
    else:
        source = "given images"

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as tmp:
        staged = Path(tmp) / "model.onnx"
        export_onnx(wrapper, staged, height, width, opset)
        problems = check_trt_graph(staged)
        if problems:
            msg = ("the exported graph breaks TensorRT's ONNX-parser rules, bundle not written: "
                   + "; ".join(problems))
            raise ExportError(msg)
        report = check_parity(wrapper, staged, images, source)
        log.info("export_parity", ok=report.ok, **report.__dict__)
        if not report.ok:
            msg = f"ONNX export disagrees with torch, bundle not written: {report.describe()}"
            raise ExportError(msg)
        _clear_old_bundle(out)
        shutil.move(str(staged), out / "model.onnx")

    training = meta.training or {}
    bundle_meta = BundleMeta(
        schema_version=SCHEMA_VERSION,
        name=name or out.name,
        detector=meta.detector,
        detector_params=dict(meta.params),
        input=InputSpec(height=height, width=width, color_order=color_order),
        opset=opset,
        thresholds=thresholds,
        training=TrainingSummary(
            category=str(training.get("category", "")),
            images=int(training.get("images", 0) or 0),
            hash=str(training.get("hash", "")),
        ),
        metrics=_float_metrics(meta.metrics or {}),
        files={"model.onnx": ""},
    )
    bundle = write_bundle(out, bundle_meta)
    log.info("bundle_written", path=str(out), detector=meta.detector, model_hash=bundle.short_hash)
    return bundle, report


def _provisional_thresholds(provisional: dict[str, Any]) -> Thresholds:
    try:
        offset = float(provisional.get("offset", 0.0))
        image = float(provisional["image"])
        pixel = float(provisional.get("pixel", image))
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"checkpoint has no usable provisional thresholds (need offset, image, pixel): {provisional!r} ({exc})"
        raise ExportError(msg) from None
    if not all(math.isfinite(v) for v in (offset, image, pixel)) or image <= offset:
        msg = (
            f"checkpoint's provisional thresholds are unusable: image {image} must be finite and above offset "
            f"{offset} (pixel {pixel}); retrain or fix the checkpoint"
        )
        raise ExportError(msg)
    return Thresholds(image=image, pixel=pixel, offset=offset, method=PROVISIONAL_METHOD)


def _float_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Keep the numeric metrics (bundle.json's `metrics` is name -> float)."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    }


def _clear_old_bundle(out: Path) -> None:
    """Remove what a previous export/calibration left: models, engines, bundle.json, the calibration figure."""
    for path in out.iterdir():
        if path.is_file() and (
            path.name in (BUNDLE_JSON, EVIDENCE_PNG)
            or (path.name.startswith("model") and path.suffix in {".onnx", ".engine", ".plan"})
        ):
            path.unlink()
