"""Out-of-sample false-reject and escape rates of a threshold rule, by stratified k-fold cross-validation. numpy only.

A threshold chosen on a set of images and then counted on the same images flatters itself: the good-only rule puts
it above the worst good image, so its in-sample false-reject rate is 0 % by construction, and the F1-optimal
threshold is fitted to exactly the defects it is scored on. Cross-validation chooses the threshold on k-1 folds with
the same rule, counts on the held-out fold, and adds the counts over the folds, so every image is judged by a
threshold that never saw it. Folds are stratified (each class, and each defect type, dealt evenly into the folds),
as in the write-up this follows (F1-optimal threshold under stratified 3-fold cross-validation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.errors import InspectdError

# rule(scores, labels) -> raw image threshold; score >= threshold is a reject.
Rule = Callable[[np.ndarray, np.ndarray], float]


class CrossValidationError(InspectdError):
    """Raised when the images cannot be split into the folds asked for."""

    exit_code = 2


@dataclass(frozen=True)
class FoldRates:
    """Held-out rates summed over the folds (the counts behind them too), and each fold's threshold."""

    folds: int
    n_good: int
    n_defect: int
    false_rejects: int  # held-out good images at or above their fold's threshold
    escapes: int  # held-out defective images below their fold's threshold
    thresholds: tuple[float, ...]

    @property
    def false_reject_rate(self) -> float:
        """Share of good images rejected by a threshold chosen without them."""
        return self.false_rejects / self.n_good

    @property
    def escape_rate(self) -> float | None:
        """Share of defective images passed by a threshold chosen without them; None without defects."""
        return self.escapes / self.n_defect if self.n_defect else None


def stratified_folds(strata: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per sample: each stratum shuffled with `seed` and dealt round-robin into the folds.

    Dealing continues across strata from where the previous one stopped, so fold sizes differ by at most one.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(strata), np.int64)
    start = 0
    for value in sorted(set(strata.tolist()), key=str):
        members = np.flatnonzero(strata == value)
        rng.shuffle(members)
        fold[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return fold


def cross_validate(
    scores: np.ndarray,
    labels: np.ndarray,
    rule: Rule,
    k: int,
    *,
    strata: np.ndarray | None = None,
    seed: int = 0,
) -> FoldRates:
    """Choose a threshold with `rule` on k-1 folds, count false rejects and escapes on the held-out fold, k times.

    `labels` are 0 good / 1 defective; `strata` (default: the labels) is what the folds are balanced over, e.g.
    "good" and each defect type. With defects, every fold's training part must still hold both classes.

    Raises:
        CrossValidationError: k < 2, or a class has fewer than k images (a fold would miss it).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(int).ravel()
    n_good, n_defect = int(np.sum(labels == 0)), int(np.sum(labels == 1))
    if k < 2:
        msg = f"--folds must be at least 2 for cross-validation, found {k}"
        raise CrossValidationError(msg)
    smallest = min(n for n in (n_good, n_defect) if n) if n_good else 0
    if n_good == 0 or smallest < k:
        msg = (
            f"{k}-fold cross-validation needs at least {k} images of each class, found {n_good} good and "
            f"{n_defect} defective; lower --folds or add images"
        )
        raise CrossValidationError(msg)
    fold = stratified_folds(labels if strata is None else np.asarray(strata), k, seed)
    false_rejects = escapes = 0
    thresholds = []
    for f in range(k):
        held = fold == f
        threshold = float(rule(scores[~held], labels[~held]))
        thresholds.append(threshold)
        false_rejects += int(np.sum(scores[held & (labels == 0)] >= threshold))
        escapes += int(np.sum(scores[held & (labels == 1)] < threshold))
    return FoldRates(k, n_good, n_defect, false_rejects, escapes, tuple(thresholds))
