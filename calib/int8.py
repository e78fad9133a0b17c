"""INT8 Q/DQ flavours of a bundle's graph, made from good images, kept only when accuracy holds. No torch.

Two flavours, because the fast form differs by runtime (see ../shared/FIELD-NOTES.md):
- "tensorrt": QDQ, symmetric int8 activations and weights, per channel (zero point 0, as TensorRT requires);
  TensorRT 10/11 builds INT8 engines from these Q/DQ nodes. On a CPU without VNNI this form is *slower* than FP32.
- "cpu": QDQ U8S8 (uint8 activations, int8 weights, reduce_range) for ONNX Runtime on CPUs without VNNI.

Only the detector's learned layers (Conv, MatMul, Gemm) are quantised. The uint8 input, cast and normalisation, the
thresholds and comparisons, and fixed-kernel arithmetic such as Gaussian smoothing or SSIM windows (recognised by
their module names in the node names) stay FP32: they are cheap, and an 8-bit threshold or smoothing kernel would
move verdicts. Each flavour must keep image / pixel AUROC within `GATE_POINTS` of FP32 on an evaluation set, and its
CPU latency is measured against FP32 so the daemon's `precision = "auto"` picks INT8 only where it is faster.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.bundle import Int8Flavour
from edge.contract import INPUT_NAME, THRESHOLD_INITIALIZERS
from edge.evaluation.metrics import image_auroc, pixel_auroc
from edge.log import get_logger
from export.runtime import paired_latency, run_model

if TYPE_CHECKING:
    import onnx

log = get_logger(__name__)

GATE_POINTS = 0.5  # max AUROC change, in points (0.5 = 0.005), either way: thresholds were set on FP32 outputs
MAX_CALIBRATION_IMAGES = 32
QUANTISED_OPS = ["Conv", "MatMul", "Gemm"]
# Module-name fragments of fixed-kernel or statistics code that must stay FP32 (node names carry module paths).
KEEP_FP32 = ("post", "blur", "smooth", "gauss", "ssim", "mahalanobis")


@dataclass(frozen=True)
class FlavourSpec:
    """How to quantise for one runtime."""

    target: str  # "tensorrt" | "cpu"
    file: str
    quant: str
    activation: str  # QuantType member name
    weight: str
    reduce_range: bool
    symmetric: bool


FLAVOURS: dict[str, FlavourSpec] = {
    "tensorrt": FlavourSpec(
        "tensorrt", "model_int8_trt.onnx", "QDQ S8S8 symmetric per-channel", "QInt8", "QInt8", False, True
    ),
    "cpu": FlavourSpec(
        "cpu", "model_int8_cpu.onnx", "QDQ U8S8 per-channel reduce_range", "QUInt8", "QInt8", True, False
    ),
}


@dataclass(frozen=True)
class EvalSet:
    """Labelled images for the accuracy gate: uint8 (N, H, W, 3), labels (N,), masks (N, H, W) or None."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    source: str


@dataclass(frozen=True)
class FlavourResult:
    """Outcome for one flavour: `entry` is what goes into bundle.json, None when refused (see `reason`)."""

    target: str
    entry: Int8Flavour | None
    reason: str


def make_flavours(
    bundle_dir: Path,
    good: np.ndarray,
    evaluation: EvalSet | None,
    *,
    targets: tuple[str, ...] = ("tensorrt", "cpu"),
    threads: int = 2,
    fp32_metrics: dict[str, float] | None = None,
) -> list[FlavourResult]:
    """Quantise model.onnx for each target, gate it, time it; files of refused flavours are removed.

    `fp32_metrics` is `evaluate(model.onnx, evaluation)` when the caller already has it.
    """
    fp32 = bundle_dir / "model.onnx"
    results: list[FlavourResult] = []
    fp32_eval = fp32_metrics or (evaluate(fp32, evaluation, threads) if evaluation is not None else None)
    for target in targets:
        spec = FLAVOURS[target]
        out = bundle_dir / spec.file
        out.unlink(missing_ok=True)
        if evaluation is None or fp32_eval is None:
            results.append(
                FlavourResult(
                    target,
                    None,
                    "no evaluation set with good and defective images (give --eval CATEGORY or --defects DIR)",
                )
            )
            continue
        quantise(fp32, out, good, spec)
        # TensorRT's INT8 is judged on the plain Q/DQ arithmetic (see export.runtime.open_session); the CPU flavour
        # on ONNX Runtime's fused kernels, which is what the daemon will run.
        int8_eval = evaluate(out, evaluation, threads, optimize=target != "tensorrt")
        assert int8_eval is not None  # same evaluation set as FP32
        deltas = {k: 100.0 * (int8_eval[k] - fp32_eval[k]) for k in fp32_eval}
        worst = max(abs(d) for d in deltas.values())
        shown = ", ".join(f"{k} {fp32_eval[k]:.4f} -> {int8_eval[k]:.4f} ({d:+.2f} pts)" for k, d in deltas.items())
        # Timed before the verdict, so a refusal still tells the operator what INT8 would have bought.
        fp32_ms, int8_ms = paired_latency(fp32, out, good[0], threads=threads)
        speed = f"ORT CPU {threads} threads FP32 {fp32_ms:.2f} ms vs INT8 {int8_ms:.2f} ms per image"
        if worst > GATE_POINTS:
            out.unlink(missing_ok=True)
            msg = f"accuracy gate failed on {evaluation.source}: {shown}; limit {GATE_POINTS} points ({speed})"
            results.append(FlavourResult(target, None, msg))
            continue
        entry = Int8Flavour(
            file=spec.file,
            target=spec.target,  # type: ignore[arg-type]
            quant=spec.quant,
            image_auroc_delta=round(deltas["image_auroc"], 4),
            pixel_auroc_delta=round(deltas["pixel_auroc"], 4) if "pixel_auroc" in deltas else None,
            fp32_ms=round(fp32_ms, 3),
            int8_ms=round(int8_ms, 3),
            faster=int8_ms < fp32_ms,
        )
        log.info("int8_flavour", target=target, fp32_ms=fp32_ms, int8_ms=int8_ms, **deltas)
        results.append(
            FlavourResult(
                target,
                entry,
                f"accepted: {shown}; {speed}",
            )
        )
    return results


def quantise(fp32: Path, out: Path, good: np.ndarray, spec: FlavourSpec) -> None:
    """Write the Q/DQ model for `spec`, calibrated (min/max) on up to MAX_CALIBRATION_IMAGES good images."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray) -> None:
            self._it: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._it, None)
            return None if image is None else {INPUT_NAME: np.ascontiguousarray(image[None])}

    model = onnx.load(str(fp32))
    weights = {i.name: len(i.dims) for i in model.graph.initializer}
    exclude = [n.name for n in model.graph.node if n.op_type in QUANTISED_OPS and _keep_fp32(n, weights)]
    pick = np.linspace(0, len(good) - 1, min(len(good), MAX_CALIBRATION_IMAGES)).round().astype(int)
    calibration = np.concatenate([good[pick], stressed(good[pick[::2]])])
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if spec.symmetric else {}
    root = logging.getLogger()
    root.addFilter(_drop_preprocess_hint)
    with tempfile.TemporaryDirectory(prefix="inspectd-int8-") as tmp:
        staged = Path(tmp) / spec.file
        try:
            quantize_static(
                str(fp32),
                str(staged),
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=QUANTISED_OPS,
                nodes_to_exclude=exclude,
                per_channel=True,
                reduce_range=spec.reduce_range,
                activation_type=getattr(QuantType, spec.activation),
                weight_type=getattr(QuantType, spec.weight),
                extra_options=extra,
            )
        finally:
            root.removeFilter(_drop_preprocess_hint)
        names = {i.name for i in onnx.load(str(staged), load_external_data=False).graph.initializer}
        missing = [n for n in THRESHOLD_INITIALIZERS.values() if n not in names]
        if missing:
            msg = f"quantised graph lost the threshold initializers {missing}"
            raise RuntimeError(msg)
        shutil.move(str(staged), out)  # the temp folder may be on another file system
    log.info("int8_quantised", target=spec.target, file=str(out), kept_fp32=len(exclude))


def stressed(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Copies of good images with one synthetic defect each (inverted, saturated or noise patch).

    Activation ranges calibrated on good images alone are too narrow for defects: a defect's features fall outside
    them and are clipped to "normal", which is exactly the signal a detector needs. Adding these to the calibration
    set widens the ranges to cover anomalous responses, still without using any real defect.
    """
    rng = np.random.default_rng(seed)
    out = images.copy()
    _, h, w, _ = images.shape
    for i, image in enumerate(out):
        ph, pw = max(2, int(h * rng.uniform(0.1, 0.3))), max(2, int(w * rng.uniform(0.1, 0.3)))
        y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = image[y : y + ph, x : x + pw]
        kind = i % 4
        if kind == 0:
            patch[...] = 255 - patch
        elif kind == 1:
            patch[...] = 255
        elif kind == 2:
            patch[...] = 0
        else:
            patch[...] = rng.integers(0, 256, patch.shape, dtype=np.uint8)
    return out


def _drop_preprocess_hint(record: logging.LogRecord) -> bool:
    """ONNX Runtime's quantiser logs a pre-processing hint on the root logger on every call; it does not apply here."""
    return "pre-processing" not in record.getMessage() and "pre-processing" not in str(record.msg)


def _keep_fp32(node: onnx.NodeProto, weights: dict[str, int]) -> bool:
    """Fixed-kernel or statistics code: by module name, or a MatMul/Gemm that is not a plain linear layer.

    A MatMul whose second input is not a 2-D weight (PaDiM's per-patch inverse covariances, a Gram matrix) is a
    distance computation, where 8 bits would swamp the differences the detector measures.
    """
    parts = node.name.lower().split("/")
    if any(frag in part for part in parts[:-1] for frag in KEEP_FP32):
        return True
    return node.op_type in ("MatMul", "Gemm") and weights.get(node.input[1]) != 2


def evaluate(
    model: Path, evaluation: EvalSet | None, threads: int, *, optimize: bool = True
) -> dict[str, float] | None:
    """Image AUROC (and pixel AUROC when masks exist) of `model` on the evaluation set."""
    if evaluation is None or len(np.unique(evaluation.labels)) < 2:
        return None
    out = run_model(model, evaluation.images, batch=4, threads=threads, optimize=optimize)
    result = {"image_auroc": image_auroc(evaluation.labels, out.score)}
    if evaluation.masks is not None and np.any(evaluation.masks):
        result["pixel_auroc"] = pixel_auroc(list(evaluation.masks), list(out.anomaly_map[:, 0]))
    return result
