"""`inspectd evaluate`: a checkpoint's metrics on a category's test set, as text, JSON and a heatmap grid.

Image AUROC and F1-max always; pixel AUROC and AUPRO when the category has masks (a defect type without
ground_truth files has image labels only: elpv_poly). Images whose file stem ends in `_subtle` (implanted by
`inspectd dataset build`) also get their own image AUROC against the good images. Latency is torch on the CPU, one
image per forward, median of a few runs; and ONNX Runtime with 2 threads on the detector's exported graph, the
figure to compare detectors by (`inspectd bench` times a whole bundle in the daemon). Both record the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.evaluation import metrics
from edge.evaluation.dataset import Category, read_category, read_image, read_mask

LATENCY_RUNS = 5
ORT_RUNS = 20
ORT_THREADS = 2


def _latency_ms(model, images: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    import torch

    from detectors.scoring import to_tensor

    device = next(iter(model.buffers())).device
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            x = to_tensor(images[i % len(images)][None], device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times[1:]))  # the first run warms up allocators


def ort_latency_ms(model, size: tuple[int, int], runs: int = ORT_RUNS, threads: int = ORT_THREADS) -> float:
    """Median ms/image of the detector's own graph (torch.onnx export, batch 1) in ONNX Runtime with `threads`.

    The bundle adds only a cast, a transpose and the threshold arithmetic around it; the same graph is what
    `inspectd bench` times inside a bundle. Sequential execution, no spin-wait (as the daemon runs it).
    """
    return paired_ort_latency_ms({"model": model}, size, runs, threads)["model"]


def paired_ort_latency_ms(
    models: dict[str, Any], size: tuple[int, int], runs: int = ORT_RUNS, threads: int = ORT_THREADS
) -> dict[str, float]:
    """`ort_latency_ms` of several detectors, timed in interleaved rounds so they share the machine's load.

    On a shared box the load changes minute to minute; one image of each model per round makes their ratio
    meaningful even when the absolute numbers are not.
    """
    import tempfile

    import onnxruntime as ort
    import torch

    x = torch.rand(1, 3, *size)
    feed = {"x": x.numpy()}
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for i, (name, model) in enumerate(models.items()):
            path = f"{tmp}/m{i}.onnx"
            torch.onnx.export(
                model.cpu().eval(), (x,), path, input_names=["x"], opset_version=17, dynamo=False,
                dynamic_axes={"x": {0: "b"}},
            )  # fmt: skip
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[name] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            sessions[name].run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


def _heat(amap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    norm = np.clip((amap - lo) / max(hi - lo, 1e-12), 0, 1)
    return cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)


def save_grid(
    path: Path,
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    low: float,
    threshold: float,
    cell: int = 160,
) -> None:
    """PNG grid: input | anomaly map over the input | mask (map >= threshold) | ground truth, one row per image.

    The colour scale runs from `low` (a typical good pixel) to 1.5x the threshold's distance from it, so the
    threshold sits at two thirds of the scale in every row and rows compare directly.
    """
    out_rows = []
    for label, image, amap, gt in rows:
        heat = _heat(amap, low, low + 1.5 * (threshold - low))
        pred = ((amap >= threshold) * 255).astype(np.uint8)
        overlay = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
        cells = [image, overlay, cv2.cvtColor(pred, cv2.COLOR_GRAY2BGR), cv2.cvtColor(gt * 255, cv2.COLOR_GRAY2BGR)]
        cells = [cv2.resize(c, (cell, cell), interpolation=cv2.INTER_NEAREST) for c in cells]
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        out_rows.append(row)
    header = np.zeros((18, cell * 4, 3), np.uint8)
    for i, title in enumerate(("input", "anomaly map", "map >= F1-max threshold", "ground truth")):
        cv2.putText(header, title, (i * cell + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([header, *out_rows], axis=0))


def _pick_rows(category: Category, n_good: int = 2, n_bad: int = 6) -> list[int]:
    good = [i for i, s in enumerate(category.test) if s.label == 0]
    bad = [i for i, s in enumerate(category.test) if s.label == 1]
    return _spread(good, n_good) + _spread(bad, n_bad)


def _spread(idx: list[int], n: int) -> list[int]:
    """Up to `n` of `idx`, evenly spaced, first and last included, none twice."""
    k = min(n, len(idx))
    return [idx[round(j * (len(idx) - 1) / max(k - 1, 1))] for j in range(k)]


def evaluate_checkpoint(
    ckpt: Path, data: Path, *, json_path: Path | None = None, grid: Path | None = None, device: str = "cpu"
) -> dict:
    """Load `ckpt`, score every test image of `data`, compute the metrics; write JSON and grid when asked."""
    from detectors.checkpoint import load
    from detectors.scoring import predict

    model, meta = load(ckpt, device=device)
    h, w = meta.input_size
    category = read_category(data)
    images = np.stack([read_image(s.path, (h, w)) for s in category.test])
    labels = np.array([s.label for s in category.test])
    scores, maps = predict(model, images)
    result: dict = {
        "detector": meta.detector,
        "category": category.name,
        "checkpoint": str(ckpt),
        "input_size": [h, w],
        "n_good": int((labels == 0).sum()),
        "n_defective": int((labels == 1).sum()),
        "image_auroc": metrics.image_auroc(labels, scores),
        "pixel_auroc": None,
        "aupro": None,
    }
    f1, thr = metrics.f1_max(labels, scores)
    result["f1_max"], result["f1_threshold"] = float(f1), float(thr)
    masks = []
    for sample in category.test:
        native = read_mask(sample, read_image(sample.path).shape[:2])
        masks.append(cv2.resize(native, (w, h), interpolation=cv2.INTER_NEAREST) if native.shape != (h, w) else native)
    if category.has_masks:
        keep = [i for i, s in enumerate(category.test) if s.label == 0 or s.mask_path is not None]
        result["pixel_auroc"] = metrics.pixel_auroc([masks[i] for i in keep], [maps[i] for i in keep])
        result["aupro"] = metrics.aupro([masks[i] for i in keep], [maps[i] for i in keep])
    subtle = np.array([s.path.stem.endswith("_subtle") for s in category.test])
    if subtle.any():
        sel = (labels == 0) | subtle
        result["image_auroc_subtle"] = metrics.image_auroc(labels[sel], scores[sel])
        sel = (labels == 0) | ((labels == 1) & ~subtle)
        if (labels[sel] == 1).any():
            result["image_auroc_obvious"] = metrics.image_auroc(labels[sel], scores[sel])
    per_type = {}
    for kind in sorted({s.defect_type for s in category.test if s.label == 1}):
        sel = np.array([s.label == 0 or s.defect_type == kind for s in category.test])
        per_type[kind] = metrics.image_auroc(labels[sel], scores[sel])
    result["image_auroc_per_type"] = per_type
    result["ms_per_image"] = _latency_ms(model, images)
    result["ort_ms_per_image"] = ort_latency_ms(model, (h, w))
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["device"] = device
    import torch

    result["torch_threads"] = torch.get_num_threads()
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if grid is not None:
        # Scale from a typical good test pixel to the image-level F1-max threshold: the provisional thresholds come
        # from (in-sample) training images and sit far below what unseen good images score.
        low = float(np.median(maps[labels == 0])) if (labels == 0).any() else float(np.median(maps))
        rows = []
        for i in _pick_rows(category):
            s = category.test[i]
            rows.append((f"{s.defect_type}/{s.path.name} {scores[i]:.3g}", images[i], maps[i], masks[i]))
        save_grid(grid, rows, low, max(float(thr), low + 1e-6))
    return result


def format_result(result: dict) -> str:
    """Human-readable summary lines."""

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"{result['detector']} on {result['category']} ({result['n_good']} good, {result['n_defective']} defective)",
        f"  image AUROC {f(result['image_auroc'])}  pixel AUROC {f(result['pixel_auroc'])}  AUPRO {f(result['aupro'])}",
        f"  F1-max {f(result['f1_max'])} at score >= {result['f1_threshold']:.4g}  "
        f"latency {result['ms_per_image']:.1f} ms/image (torch), {result['ort_ms_per_image']:.1f} ms/image "
        f"(ONNX Runtime, {ORT_THREADS} threads), load average {result['load_average'][0]}",
    ]
    if "image_auroc_subtle" in result:
        subtle, obvious = f(result["image_auroc_subtle"]), f(result.get("image_auroc_obvious"))
        lines.append(f"  image AUROC subtle {subtle}  obvious {obvious}")
    lines.append("  per type: " + ", ".join(f"{k} {v:.3f}" for k, v in result["image_auroc_per_type"].items()))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the evaluate options."""
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by `inspectd train`")
    parser.add_argument("--data", required=True, type=Path, help="category folder (MVTec layout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="PNG grid of input/map/mask/ground truth (default: <ckpt stem>_grid.png beside the ckpt)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run the model")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the metrics."""
    grid = args.grid or args.ckpt.with_name(f"{args.ckpt.stem}_grid.png")
    result = evaluate_checkpoint(args.ckpt, args.data, json_path=args.json, grid=grid, device=args.device)
    print(format_result(result))
    print(f"  grid {grid}" + (f", json {args.json}" if args.json else ""))
    return 0
