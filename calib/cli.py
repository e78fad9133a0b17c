"""`inspectd calibrate`: thresholds from held-out good images (and defect samples if any), INT8 flavours. No torch.

    inspectd calibrate --bundle BUNDLE_DIR --good DIR [--defects DIR_WITH_MASKS] [--margin 1.1 | --quantile Q]
                       [--folds K] [--int8/--no-int8] [--eval DIR/CATEGORY]

The bundle's own ONNX graph scores the images (ONNX Runtime, CPU), so what is calibrated is exactly what the daemon
runs. Thresholds are written into every graph of the bundle and into bundle.json, which is then re-hashed. The
false-reject and escape rates are given in-sample and as stratified k-fold estimates (calib/crossval.py), and the
evidence (histograms, ROC, confusion matrix) is drawn into the bundle folder as calibration.png (calib/figure.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from calib.crossval import FoldRates, cross_validate
from calib.int8 import EvalSet, evaluate, make_flavours
from calib.thresholds import (
    MIN_GOOD,
    Scored,
    choose,
    describe,
    image_rule,
    pooled,
    require_good,
    to_raw,
    write_thresholds,
)
from edge.bundle import EVIDENCE_PNG, Bundle, BundleMeta, Thresholds, load_bundle, write_bundle
from edge.errors import DatasetError
from edge.evaluation.dataset import Sample, list_images, read_category, read_image, read_mask
from export.runtime import run_model

DEFAULT_FOLDS = 3  # the write-up's stratified 3-fold


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `inspectd calibrate`."""
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder made by `inspectd export`")
    parser.add_argument(
        "--good", type=Path, required=True, help="folder of held-out good images (not the training set)"
    )
    parser.add_argument(
        "--defects", type=Path, help="MVTec-style folder (test/<type>/, ground_truth/<type>/) with defective samples"
    )
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--margin", type=float, help="good-only: median + MARGIN x (max - median) (default 1.1)")
    rule.add_argument("--quantile", type=float, help="good-only: this quantile of the good scores, e.g. 0.99")
    parser.add_argument(
        "--int8", action=argparse.BooleanOptionalAction, default=True, help="make INT8 Q/DQ flavours (default: yes)"
    )
    parser.add_argument("--eval", type=Path, help="MVTec category for the INT8 accuracy gate (default: --defects)")
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        help="stratified k-fold out-of-sample rates beside the in-sample ones (default 3 where every class has 3 "
        "images; 0 = off)",
    )
    parser.add_argument("--min-good", type=int, default=MIN_GOOD, help="refuse fewer good images (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Calibrate the bundle in place; print the thresholds, expected rates and INT8 outcome."""
    bundle = load_bundle(args.bundle)
    size = (bundle.meta.input.height, bundle.meta.input.width)
    good_paths = list_images(args.good)
    require_good(len(good_paths), str(args.good), args.min_good)
    good_images = np.stack([read_image(p, size) for p in good_paths])
    good = score(bundle, good_images, np.zeros(len(good_images), int), None, args.threads)

    defects_set = load_eval_set(args.defects, size) if args.defects else None
    defects = (
        score(bundle, defects_set.images, defects_set.labels, defects_set.masks, args.threads) if defects_set else None
    )
    thresholds = choose(good, defects, margin=args.margin, quantile=args.quantile)
    rates = out_of_sample(good, defects, args)
    if rates is not None:
        thresholds = thresholds.model_copy(
            update={
                "cv_folds": rates.folds,
                "cv_false_reject_rate": rates.false_reject_rate,
                "cv_escape_rate": rates.escape_rate,
            }
        )
    meta = apply_thresholds(bundle, thresholds)
    print(describe(thresholds))
    print(draw(bundle, thresholds, good, defects, rates))

    evaluation = load_eval_set(args.eval, size) if args.eval else defects_set
    fp32_metrics = evaluate(bundle.onnx_path, evaluation, args.threads) if evaluation is not None else None
    if fp32_metrics and evaluation is not None:
        meta = meta.model_copy(update={"metrics": {**meta.metrics, **fp32_metrics}})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in fp32_metrics.items())
        print(f"evaluation on {evaluation.source}: {shown}")
    if args.int8:
        results = make_flavours(bundle.path, good_images, evaluation, threads=args.threads, fp32_metrics=fp32_metrics)
        meta = meta.model_copy(update={"int8": [r.entry for r in results if r.entry is not None]})
        for r in results:
            print(f"int8 {r.target}: {'written' if r.entry else 'not written'} — {r.reason}")
    written = write_bundle(bundle.path, meta)
    print(f"bundle {bundle.path} updated: model.onnx {written.short_hash}")
    return 0


def out_of_sample(good: Scored, defects: Scored | None, args: argparse.Namespace) -> FoldRates | None:
    """k-fold rates of the same threshold rule, or None when switched off (or, by default, too few images)."""
    if args.folds == 0:
        return None
    scores, labels = pooled(good, defects)
    if defects is None or not np.any(labels == 1):
        scores, labels = scores[: len(good.scores)], labels[: len(good.scores)]
    k = DEFAULT_FOLDS if args.folds is None else args.folds
    counts = [int(np.sum(labels == c)) for c in (0, 1) if np.any(labels == c)]
    if args.folds is None and min(counts) < k:
        print(f"{k}-fold out-of-sample rates skipped: a class has only {min(counts)} images (give --folds)")
        return None
    return cross_validate(scores, labels, image_rule(args.margin, args.quantile), k)


def draw(bundle: Bundle, t: Thresholds, good: Scored, defects: Scored | None, rates: FoldRates | None) -> str:
    """The evidence PNG in the bundle folder (normalised scores, threshold 1.0); returns the line to print."""
    try:
        from calib.figure import draw_evidence
    except ImportError as exc:  # matplotlib comes with the train extra
        return f"calibration figure not drawn: {exc} (pip install 'inspectd[train]')"
    scores, labels = pooled(good, defects)
    normalised = (scores - t.offset) / (t.image - t.offset)
    title = f"{bundle.meta.name} ({bundle.meta.detector}): {t.method}"
    evidence = draw_evidence(
        bundle.file(EVIDENCE_PNG), normalised[labels == 0], normalised[labels == 1], title=title, rates=rates
    )
    return f"calibration figure {evidence.path}"


def score(bundle: Bundle, images: np.ndarray, labels: np.ndarray, masks: np.ndarray | None, threads: int) -> Scored:
    """Raw scores and maps of the bundle's FP32 graph (normalised outputs mapped back with its thresholds)."""
    out = run_model(bundle.onnx_path, images, batch=4, threads=threads)
    t = bundle.meta.thresholds
    return Scored(to_raw(out.score, t), to_raw(out.anomaly_map[:, 0], t), np.asarray(labels), masks)


def apply_thresholds(bundle: Bundle, thresholds: Thresholds) -> BundleMeta:
    """Write `thresholds` into model.onnx and every INT8 flavour; drop an engine built with the old ones."""
    write_thresholds(bundle.onnx_path, thresholds)
    flavours = {f.file for f in bundle.meta.int8}
    for name in sorted(flavours):
        if bundle.file(name).is_file():
            write_thresholds(bundle.file(name), thresholds)
    for name in sorted(bundle.meta.files):  # e.g. model_fp16.onnx, made from model.onnx for an engine build
        if name.endswith(".onnx") and name != "model.onnx" and name not in flavours:
            bundle.file(name).unlink(missing_ok=True)
            print(f"{name} removed: derived from the uncalibrated model.onnx; the engine build remakes it")
    update: dict = {"thresholds": thresholds}
    if bundle.meta.engine is not None:
        bundle.file(bundle.meta.engine.file).unlink(missing_ok=True)
        update["engine"] = None
        print(
            f"TensorRT engine {bundle.meta.engine.file} removed: it holds the old thresholds; rebuild it with "
            f"`inspectd export --out {bundle.path} --engine`"
        )
    return bundle.meta.model_copy(update=update)


def load_eval_set(root: Path, size: tuple[int, int]) -> EvalSet:
    """Test images of an MVTec-style folder at the bundle's size, with labels and masks (resized nearest).

    `train/` is not needed: only `test/<type>/` and, for pixel metrics, `ground_truth/<type>/`.

    Raises:
        DatasetError: the folder has no test images.
    """
    samples = read_category(root).test if (root / "train" / "good").is_dir() else _test_samples(root)
    images, labels, masks = [], [], []
    for sample in samples:
        native = read_image(sample.path)
        images.append(read_image(sample.path, size) if native.shape[:2] != size else native)
        mask = read_mask(sample, native.shape[:2])
        masks.append(cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
        labels.append(sample.label)
    has_masks = any(s.mask_path is not None for s in samples)
    return EvalSet(np.stack(images), np.asarray(labels), np.stack(masks) if has_masks else None, str(root))


def _test_samples(root: Path) -> list[Sample]:
    test = root / "test"
    if not test.is_dir():
        msg = f"{root}: expected MVTec layout with test/good and test/<defect_type> folders (ground_truth/ optional)"
        raise DatasetError(msg)
    samples = []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        gt = root / "ground_truth" / type_dir.name
        for image in list_images(type_dir):
            mask = gt / f"{image.stem}_mask.png"
            label = int(type_dir.name != "good")
            samples.append(Sample(image, label, type_dir.name, mask if label and mask.is_file() else None))
    return samples
