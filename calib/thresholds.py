"""Choosing raw thresholds from scored images, and writing them into an exported graph. No torch.

The graph reports `(raw - offset) / (image - offset)`, so the calibrated image threshold reads 1.0 and a typical good
part about 0.0 on every line, whatever the detector's raw scale. Calibration turns the current bundle's normalised
outputs back into raw values, picks new thresholds, and rewrites the three initializers in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.bundle import Thresholds
from edge.contract import THRESHOLD_INITIALIZERS
from edge.errors import DatasetError, InspectdError
from edge.evaluation.metrics import f1_max

MIN_GOOD = 20  # below this the max (or a quantile) of good scores says little about the next thousand parts
DEFAULT_MARGIN = 1.1
_PIXEL_SAMPLE = 1 << 22  # F1 over at most this many pixels (subsampled above)


class CalibrationError(InspectdError):
    """Raised when thresholds cannot be chosen or written (degenerate scores, a graph without threshold inputs)."""


@dataclass(frozen=True)
class Scored:
    """Raw outputs for a set of images: scores (N,), maps (N, H, W), and masks (N, H, W) {0,1} when known."""

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray  # 0 good, 1 defective
    masks: np.ndarray | None = None


def to_raw(normalised: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Undo the graph's normalisation: raw = n * (image - offset) + offset (float64)."""
    n = np.asarray(normalised, dtype=np.float64)
    return n * (thresholds.image - thresholds.offset) + thresholds.offset


def require_good(n_found: int, where: str, minimum: int = MIN_GOOD) -> None:
    """Refuse to calibrate on too few good images, saying how many are needed.

    Raises:
        DatasetError: fewer than `minimum` good images.
    """
    if n_found < minimum:
        msg = (
            f"calibration needs at least {minimum} good images, found {n_found} in {where}; "
            f"add {minimum - n_found} more held-out good images (not the training ones)"
        )
        raise DatasetError(msg)


def choose(
    good: Scored, defects: Scored | None = None, *, margin: float | None = None, quantile: float | None = None
) -> Thresholds:
    """Pick thresholds: good-only (margin or quantile) by default, F1-optimal when defective samples are given.

    Good-only: image = median + margin x (max - median) of the good scores (with margin 1.1 the worst good image
    scores 1/1.1 = 0.91), or the `quantile` of the good scores (about 1 - q of good parts rejected). The pixel
    threshold follows the same rule over each good image's maximum pixel, so good images get empty masks.
    With defects: image threshold maximising F1 over good + defective images; pixel threshold maximising F1 over the
    pixels when masks are known, else the good-only pixel rule. Offset = median good score in both cases.

    Raises:
        CalibrationError: margin/quantile out of range, or scores that are not finite.
    """
    if margin is not None and quantile is not None:
        msg = "give either --margin or --quantile, not both"
        raise CalibrationError(msg)
    if quantile is not None and not 0.5 <= quantile <= 1.0:
        msg = f"--quantile must be in [0.5, 1.0], found {quantile}"
        raise CalibrationError(msg)
    margin = DEFAULT_MARGIN if margin is None and quantile is None else margin
    if margin is not None and margin < 1.0:
        msg = f"--margin must be >= 1.0 (it scales the gap above the worst good image), found {margin}"
        raise CalibrationError(msg)
    scores = good.scores.astype(np.float64)
    peaks = good.maps.reshape(len(good.maps), -1).max(axis=1).astype(np.float64)
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(peaks))):
        msg = "the model produced non-finite scores on good images; the bundle is broken, re-export it"
        raise CalibrationError(msg)
    offset = float(np.median(scores))
    has_defects = defects is not None and bool(np.any(defects.labels == 1))
    all_scores, labels = pooled(good, defects if has_defects else None)
    image = image_rule(margin, quantile)(all_scores, labels)
    pixel = _good_rule(peaks, margin, quantile)
    rule = f"median + {margin:g} x (max - median)" if margin is not None else f"quantile {quantile:g}"
    method = f"good-only: {rule} of {len(scores)} good images"
    n_defect = 0
    escape: float | None = None
    if defects is not None and has_defects:
        method = f"F1-optimal on {int(np.sum(labels == 0))} good + {int(np.sum(labels == 1))} defective images"
        if defects.masks is not None and np.any(defects.masks):
            pixel = _pixel_f1(good, defects)
            method += "; pixel threshold F1-optimal over pixels"
        else:
            method += f"; pixel threshold good-only ({rule})"
        n_defect = int(np.sum(defects.labels == 1))
        scores = all_scores[labels == 0]
        escape = float(np.mean(all_scores[labels == 1] < image))
    offset = _usable_offset(offset, image, scores)
    return Thresholds(
        image=float(image),
        pixel=float(pixel),
        offset=offset,
        method=method,
        calibrated=True,
        n_good=len(scores),
        n_defect=n_defect,
        expected_false_reject_rate=float(np.mean(scores >= image)),
        expected_escape_rate=escape,
    )


def pooled(good: Scored, defects: Scored | None) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (float64) and labels of the good images followed by the defect set's (which may hold good ones)."""
    if defects is None:
        return good.scores.astype(np.float64), np.zeros(len(good.scores), int)
    scores = np.concatenate([good.scores.astype(np.float64), defects.scores.astype(np.float64)])
    return scores, np.concatenate([np.zeros(len(good.scores), int), defects.labels.astype(int)])


def image_rule(margin: float | None, quantile: float | None) -> Callable[[np.ndarray, np.ndarray], float]:
    """The image-threshold rule of `choose` as rule(scores, labels), so cross-validation can refit it on every fold.

    F1-optimal when defects are among the labels, else the good-only rule (margin, default 1.1, or quantile).
    """
    margin = DEFAULT_MARGIN if margin is None and quantile is None else margin

    def rule(scores: np.ndarray, labels: np.ndarray) -> float:
        if np.any(labels == 1):
            return f1_max(labels, scores)[1]
        return _good_rule(scores[labels == 0], margin, quantile)

    return rule


def _good_rule(values: np.ndarray, margin: float | None, quantile: float | None) -> float:
    if quantile is not None:
        return float(np.quantile(values, quantile))
    if margin is None:  # choose() sets the default margin when no quantile is given
        msg = "the good-only threshold rule needs a margin or a quantile"
        raise ValueError(msg)
    median, top = float(np.median(values)), float(np.max(values))
    gap = top - median
    if gap <= 0:  # all good images score the same: any margin above it will do
        gap = max(abs(top), 1.0) * 1e-3
    return median + float(margin) * gap


def _pixel_f1(good: Scored, defects: Scored) -> float:
    maps = np.concatenate([good.maps.reshape(-1), defects.maps.reshape(-1)])
    truth = np.concatenate([np.zeros(good.maps.size, np.uint8), np.asarray(defects.masks).reshape(-1)])
    if maps.size > _PIXEL_SAMPLE:
        pick = np.random.default_rng(0).choice(maps.size, _PIXEL_SAMPLE, replace=False)
        maps, truth = maps[pick], truth[pick]
    _, threshold = f1_max(truth, maps)
    return float(threshold)


def _usable_offset(offset: float, image: float, good_scores: np.ndarray) -> float:
    """The median good score, moved below the image threshold when a low F1 threshold puts it at or above."""
    if image > offset and math.isfinite(offset):
        return offset
    low = float(np.min(good_scores))
    if image > low:
        return low
    return image - max(abs(image), 1.0) * 1e-3


def describe(t: Thresholds) -> str:
    """Operator-facing summary of calibrated thresholds and the rates they imply on the data given."""
    fr = "n/a" if t.expected_false_reject_rate is None else f"{100 * t.expected_false_reject_rate:.1f}%"
    esc = "n/a (no defective samples)" if t.expected_escape_rate is None else f"{100 * t.expected_escape_rate:.1f}%"
    text = (
        f"thresholds ({t.method}): image {t.image:.5g}, pixel {t.pixel:.5g}, offset {t.offset:.5g}\n"
        f"expected false-reject rate {fr} of {t.n_good} good images; expected escape rate {esc}"
        + (f" of {t.n_defect} defective images" if t.n_defect else "")
        + " (in-sample: the images the threshold was chosen on)"
    )
    if t.cv_folds and t.cv_false_reject_rate is not None:
        text += f"\n{t.cv_folds}-fold out-of-sample: false-reject rate {100 * t.cv_false_reject_rate:.1f}%"
        if t.cv_escape_rate is not None:
            text += f", escape rate {100 * t.cv_escape_rate:.1f}%"
        text += " (each image judged by a threshold chosen on the other folds)"
    return text


def write_thresholds(onnx_path: Path, thresholds: Thresholds) -> None:
    """Rewrite the PostProcess threshold initializers of an exported graph (FP32 or Q/DQ) in place.

    Raises:
        CalibrationError: the graph lacks one of the named initializers (not made by `inspectd export`).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    by_name = {init.name: init for init in model.graph.initializer}
    for field, name in THRESHOLD_INITIALIZERS.items():
        init = by_name.get(name)
        if init is None:
            msg = f"{onnx_path}: no initializer {name!r}; only graphs made by `inspectd export` can be calibrated"
            raise CalibrationError(msg)
        value = np.asarray(getattr(thresholds, field), dtype=np.float32).reshape(tuple(init.dims))
        init.CopyFrom(numpy_helper.from_array(value, name))
    onnx.save(model, str(onnx_path))
