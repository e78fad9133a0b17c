"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO (up to FPR 0.3), F1-max. numpy only.

All curve metrics share one idea: count, for each threshold t, how many values are >= t, by binning values against
a sorted threshold grid and taking reverse cumulative sums. With the grid = every distinct value the result is exact
(and equals scikit-learn's ROC AUC); above `EXACT_LIMIT` values in total the grid is `GRID_SIZE` quantiles of a
subsample, so 100 maps of 1024x1024 are scored image by image without ever holding N×H×W float64 copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

EXACT_LIMIT = 1 << 22  # values; above this the threshold grid is subsampled
GRID_SIZE = 1 << 14  # thresholds in the subsampled grid
_SUBSAMPLE_PER_IMAGE = 1 << 14


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores (label 1 = defective)."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_both_classes(labels, "image_auroc")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, threshold) from (0, 0) at threshold +inf down to (1, 1); score >= threshold = defective."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_both_classes(labels, "roc_curve")
    edges = np.unique(scores)
    pos = _counts_ge(scores[labels == 1], edges)
    neg = _counts_ge(scores[labels == 0], edges)
    fpr = np.concatenate([[0.0], (neg / neg[0])[::-1]])
    tpr = np.concatenate([[0.0], (pos / pos[0])[::-1]])
    return fpr, tpr, np.concatenate([[np.inf], edges[::-1]])


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pixels of all images; `masks` are {0,1} ground truth, `maps` anomaly maps of equal shape."""
    _check_pairs(masks, maps)
    edges = _threshold_grid(maps)
    pos = np.zeros(len(edges), np.int64)
    neg = np.zeros(len(edges), np.int64)
    for mask, amap in zip(masks, maps, strict=True):
        defect = np.asarray(mask).astype(bool)
        amap = np.asarray(amap)
        pos += _counts_ge(amap[defect], edges)
        neg += _counts_ge(amap[~defect], edges)
    if pos[0] == 0 or neg[0] == 0:
        msg = "pixel_auroc needs both defective and good pixels in the masks"
        raise ValueError(msg)
    return _auc(neg / neg[0], pos / pos[0])


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to `fpr_limit` (Bergmann et al., MVTec AD).

    PRO(t) is the mean, over every connected defect region of every image, of the fraction of the region's pixels
    with map >= t; the curve is PRO against the false-positive rate over all good pixels. The area up to `fpr_limit`
    is divided by `fpr_limit`, so a perfect detector scores 1.
    """
    if not 0 < fpr_limit <= 1:
        msg = f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}"
        raise ValueError(msg)
    _check_pairs(masks, maps)
    edges = _threshold_grid(maps)
    neg = np.zeros(len(edges), np.int64)
    overlap_sum = np.zeros(len(edges), np.float64)
    regions = 0
    for mask, amap in zip(masks, maps, strict=True):
        amap = np.asarray(amap)
        defect = np.asarray(mask).astype(np.uint8)
        neg += _counts_ge(amap[defect == 0], edges)
        n_labels, labels = cv2.connectedComponents(defect, connectivity=8)
        for label in range(1, n_labels):
            values = amap[labels == label]
            overlap_sum += _counts_ge(values, edges) / values.size
            regions += 1
    if regions == 0 or neg[0] == 0:
        msg = "aupro needs at least one defect region and some good pixels"
        raise ValueError(msg)
    fpr = neg / neg[0]
    pro = overlap_sum / regions
    return _auc(fpr, pro, x_limit=fpr_limit) / fpr_limit


def f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (score >= threshold means defective)."""
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    _check_both_classes(labels, "f1_max")
    edges = np.unique(scores)
    tp = _counts_ge(scores[labels == 1], edges).astype(np.float64)
    predicted = _counts_ge(scores, edges).astype(np.float64)
    f1 = 2 * tp / (predicted + tp[0])  # 2PR/(P+R) = 2TP / (predicted positives + actual positives)
    best = int(np.argmax(f1))
    return float(f1[best]), float(edges[best])


def _counts_ge(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For each threshold edges[k] (ascending), how many `values` are >= it."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return np.zeros(len(edges), np.int64)
    index = np.searchsorted(edges, values, side="right") - 1  # bin k: edges[k] <= v < edges[k+1]
    hist = np.bincount(index[index >= 0], minlength=len(edges))
    return np.cumsum(hist[::-1])[::-1]


def _threshold_grid(maps: Iterable[np.ndarray]) -> np.ndarray:
    """Every distinct value when there are few enough (exact), else quantiles of a per-image subsample."""
    maps = list(maps)
    total = sum(np.asarray(m).size for m in maps)
    if total <= EXACT_LIMIT:
        return np.unique(np.concatenate([np.asarray(m).ravel() for m in maps]))
    rng = np.random.default_rng(0)
    sample = []
    lo, hi = np.inf, -np.inf
    for amap in maps:
        flat = np.asarray(amap).ravel()
        lo, hi = min(lo, float(flat.min())), max(hi, float(flat.max()))
        sample.append(rng.choice(flat, size=min(flat.size, _SUBSAMPLE_PER_IMAGE), replace=False))
    grid = np.quantile(np.concatenate(sample).astype(np.float64), np.linspace(0, 1, GRID_SIZE))
    return np.unique(np.concatenate([[lo], grid, [hi]]))


def _auc(fpr: np.ndarray, tpr: np.ndarray, x_limit: float = 1.0) -> float:
    """Trapezoidal area under (fpr, tpr) points given for ascending thresholds, from (0, 0), cut at `x_limit`."""
    x = np.concatenate([[0.0], fpr[::-1]])
    y = np.concatenate([[0.0], tpr[::-1]])
    if x_limit < 1.0:
        keep = x <= x_limit
        cut = int(keep.sum())
        if cut < len(x):
            x0, x1, y0, y1 = x[cut - 1], x[cut], y[cut - 1], y[cut]
            y_lim = y0 if x1 == x0 else y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
            x = np.concatenate([x[:cut], [x_limit]])
            y = np.concatenate([y[:cut], [y_lim]])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _check_both_classes(labels: np.ndarray, name: str) -> None:
    if not (np.any(labels == 1) and np.any(labels == 0)):
        msg = f"{name} needs both good (0) and defective (1) labels, got {np.unique(labels).tolist()}"
        raise ValueError(msg)


def _check_pairs(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> None:
    if len(masks) != len(maps) or not masks:
        msg = f"need one mask per map and at least one of each, got {len(masks)} masks and {len(maps)} maps"
        raise ValueError(msg)
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
        if np.shape(mask) != np.shape(amap):
            msg = f"mask {i} has shape {np.shape(mask)} but its map has {np.shape(amap)}"
            raise ValueError(msg)
