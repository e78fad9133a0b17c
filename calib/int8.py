"""INT8 Q/DQ flavours of a bundle's graph, made from good images, kept only when accuracy holds. No torch.

Two flavours, because the fast form differs by runtime (see ../shared/FIELD-NOTES.md):
- "tensorrt": QDQ, symmetric int8 activations and weights, per channel (zero point 0, as TensorRT requires);
  TensorRT 10/11 builds INT8 engines from these Q/DQ nodes. Judged on the plain Q/DQ arithmetic (what TensorRT
  computes), not on ONNX Runtime's CPU kernels: on x86 ONNX Runtime fuses no int8-activation Conv (its
  `QDQIsInt8Allowed()` is false off ARM), so this form runs mostly as float convolutions there.
- "cpu": QDQ U8S8 (uint8 activations, int8 weights, full 8-bit range) for ONNX Runtime's integer kernels. Not
  `reduce_range`: 7-bit weights moved padim's image AUROC 4.5-13 points; on a CPU without VNNI the daemon runs
  this graph with `session.x64quantprecision` (U8U8 products that cannot saturate) and times it against FP32 at
  start-up.

What is quantised is decided by `calib.sensitivity.search` over the detector's learned blocks (`calib.qdq`): all
of them if the gate holds, else the most sensitive stay FP32 one at a time. The uint8 input and its normalisation,
the detector-level arithmetic (distance, smoothing, max) and the thresholds always stay FP32. Each flavour must keep
image / pixel AUROC within `GATE_POINTS` of FP32 on an evaluation set; bundle.json records what stayed FP32 and why,
the calibration, and the FP32/INT8 latency on the calibrating CPU (the daemon re-times on its own, see
edge/backends/precision.py).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calib.qdq import QuantSpec, block_of, learned_blocks, prepare
from calib.sensitivity import Plan, search
from edge.backends.precision import cpu_identity
from edge.bundle import Fp32Part, Int8Flavour
from edge.contract import THRESHOLD_INITIALIZERS
from edge.evaluation.metrics import image_auroc, pixel_auroc
from edge.log import get_logger
from export.runtime import paired_latency, run_model

if TYPE_CHECKING:
    import onnx

log = get_logger(__name__)

GATE_POINTS = 0.5  # max AUROC change, in points (0.5 = 0.005), either way: thresholds were set on FP32 outputs
MAX_CALIBRATION_IMAGES = 32
FLOAT_COMPUTE = ("Conv", "MatMul", "Gemm")  # detector-level nodes of these types are named in bundle.json


@dataclass(frozen=True)
class FlavourSpec:
    """How to quantise for one runtime, and how its accuracy is judged (`optimize`: on ORT's fused kernels)."""

    target: str  # "tensorrt" | "cpu"
    file: str
    quant: str
    spec: QuantSpec
    optimize: bool


FLAVOURS: dict[str, FlavourSpec] = {
    "tensorrt": FlavourSpec(
        "tensorrt", "model_int8_trt.onnx", "QDQ S8S8 symmetric per-channel",
        QuantSpec("QInt8", "QInt8", symmetric=True), optimize=False,
    ),
    "cpu": FlavourSpec(
        "cpu", "model_int8_cpu.onnx", "QDQ U8S8 per-channel", QuantSpec("QUInt8", "QInt8", symmetric=False),
        optimize=True,
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
    """Search, gate and time each target's Q/DQ graph; files of refused flavours are removed.

    `fp32_metrics` is `evaluate(model.onnx, evaluation)` when the caller already has it.
    """
    fp32 = bundle_dir / "model.onnx"
    for target in targets:
        (bundle_dir / FLAVOURS[target].file).unlink(missing_ok=True)
    fp32_eval = fp32_metrics or (evaluate(fp32, evaluation, threads) if evaluation is not None else None)
    if evaluation is None or fp32_eval is None:
        why = "no evaluation set with good and defective images (give --eval CATEGORY or --defects DIR)"
        return [FlavourResult(t, None, why) for t in targets]
    calibration, probe, described = calibration_sets(good)
    results = []
    with tempfile.TemporaryDirectory(prefix="inspectd-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare(fp32, prepared)
        for target in targets:
            results.append(
                _flavour(FLAVOURS[target], fp32, prepared, Path(tmp), calibration, probe, described, evaluation,
                         fp32_eval, threads)
            )
    return results


def _flavour(
    flavour: FlavourSpec,
    fp32: Path,
    prepared: Path,
    tmp: Path,
    calibration: np.ndarray,
    probe: np.ndarray,
    described: str,
    evaluation: EvalSet,
    fp32_eval: dict[str, float],
    threads: int,
) -> FlavourResult:
    import onnx

    model = onnx.load(str(prepared), load_external_data=False)
    blocks, skipped = learned_blocks(model)
    judged: dict[Path, dict[str, float]] = {}

    def gate(path: Path) -> bool:
        int8_eval = evaluate(path, evaluation, threads, optimize=flavour.optimize)
        if int8_eval is None:  # the set gave FP32 metrics, so it has good and defective images
            msg = f"{path.name}: the evaluation set gave FP32 metrics but none for INT8"
            raise RuntimeError(msg)
        judged[path] = {k: 100.0 * (int8_eval[k] - fp32_eval[k]) for k in fp32_eval}
        log.info("int8_gate", target=flavour.target, **{k: round(v, 3) for k, v in judged[path].items()})
        return within_gate(judged[path])

    staged = tmp / flavour.file
    plan = search(prepared, staged, blocks, flavour.spec, calibration, probe, gate, tmp / f"{flavour.target}.json",
                  threads=threads, optimize=flavour.optimize)
    deltas = judged[staged]
    shown = ", ".join(f"{k} {fp32_eval[k]:.4f} -> {fp32_eval[k] + d / 100:.4f} ({d:+.2f} pts)"
                      for k, d in deltas.items())
    kept = f"{len(plan.kept)} of {len(blocks)} quantisable blocks kept FP32" + (
        f" ({', '.join(plan.kept)})" if plan.kept else "")
    # Timed before the verdict, so a refusal still tells the operator what INT8 would have bought.
    fp32_ms, int8_ms = paired_latency(fp32, staged, calibration[0], threads=threads)
    speed = f"ORT CPU {threads} threads FP32 {fp32_ms:.2f} ms vs INT8 {int8_ms:.2f} ms per image"
    if not plan.passed:
        msg = (f"accuracy gate failed on {evaluation.source} even with {kept}: {shown}; limit {GATE_POINTS} points "
               f"({speed})")
        return FlavourResult(flavour.target, None, msg)
    names = {i.name for i in onnx.load(str(staged), load_external_data=False).graph.initializer}
    missing = [n for n in THRESHOLD_INITIALIZERS.values() if n not in names]
    if missing:
        msg = f"quantised graph lost the threshold initializers {missing}"
        raise RuntimeError(msg)
    shutil.move(str(staged), fp32.parent / flavour.file)  # the temp folder may be on another file system
    cpu = cpu_identity()
    entry = Int8Flavour(
        file=flavour.file,
        target=flavour.target,  # type: ignore[arg-type]
        quant=flavour.quant,
        image_auroc_delta=round(deltas["image_auroc"], 4),
        pixel_auroc_delta=round(deltas["pixel_auroc"], 4) if "pixel_auroc" in deltas else None,
        fp32_ms=round(fp32_ms, 3),
        int8_ms=round(int8_ms, 3),
        faster=int8_ms < fp32_ms,
        measured_on=f"{cpu['model']} ({' '.join(cpu['isa']) or 'no SIMD flags read'})",
        calibration=f"{flavour.spec.method}, {described}",
        fp32=fp32_parts(model, plan, skipped),
    )
    log.info("int8_flavour", target=flavour.target, fp32_ms=fp32_ms, int8_ms=int8_ms, kept=list(plan.kept), **deltas)
    return FlavourResult(flavour.target, entry, f"accepted: {shown}; {kept}; {speed}")


def within_gate(deltas: dict[str, float]) -> bool:
    """Every AUROC change (points) within GATE_POINTS, either way.

    Rounded first: AUROC changes are multiples of 1 / (n_good x n_defect), so exactly 0.5 points is common, and the
    float difference of two AUROCs lands on either side of it.
    """
    return max(round(abs(d), 6) for d in deltas.values()) <= GATE_POINTS


def fp32_parts(model: onnx.ModelProto, plan: Plan, skipped: dict[str, str]) -> list[Fp32Part]:
    """bundle.json's record of what stayed FP32: the kept blocks with their sensitivity, then the fixed parts."""
    rank = {e.block: (i + 1, e.error) for i, e in enumerate(plan.ranking)}
    parts = [
        Fp32Part(nodes=b, reason=f"sensitive: quantised alone it moves the normalised outputs by {rank[b][1]:.4f} "
                 f"(rank {rank[b][0]} of {len(rank)}); all-INT8 failed the accuracy gate")
        for b in plan.kept
    ]
    parts += [Fp32Part(nodes=b, reason=why) for b, why in skipped.items()]
    fixed = [n.name for n in model.graph.node
             if n.op_type in FLOAT_COMPUTE and block_of(n.name) is None
             and n.name not in (*plan.quantised, *plan.kept)]
    parts += [Fp32Part(nodes=n, reason="not a learned layer (distance, smoothing or score arithmetic): 8 bits "
                       "would quantise the anomaly map itself") for n in fixed]
    parts.append(Fp32Part(nodes="input cast and normalisation, thresholds and outputs",
                          reason="pre/post-processing of the bundle contract"))
    return parts


def calibration_sets(good: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration images, probe images for the sensitivity ranking, a description for bundle.json).

    Calibration: up to MAX_CALIBRATION_IMAGES good images spread over the set, plus stressed copies of every other
    one; probe: the other good images (or the same when there are few) and their stressed copies (another seed).
    """
    pick = np.linspace(0, len(good) - 1, min(len(good), MAX_CALIBRATION_IMAGES)).round().astype(int)
    calibration = np.concatenate([good[pick], stressed(good[pick[::2]])])
    rest = np.setdiff1d(np.arange(len(good)), pick)
    probe_good = good[rest] if len(rest) >= 4 else good[pick[1::2]]
    probe = np.concatenate([probe_good, stressed(probe_good, seed=1)])
    described = f"{len(pick)} good images + {len(pick[::2])} stressed copies"
    return calibration, probe, described


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
