"""k-fold out-of-sample rates: folds are stratified, and the rates equal a direct count on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from calib.crossval import CrossValidationError, cross_validate, stratified_folds
from edge.evaluation.metrics import f1_max


def max_rule(scores: np.ndarray, labels: np.ndarray) -> float:
    """Good-only rule of calibrate: median + 1.1 x (max - median) of the good scores."""
    good = scores[labels == 0]
    return float(np.median(good) + 1.1 * (good.max() - np.median(good)))


def f1_rule(scores: np.ndarray, labels: np.ndarray) -> float:
    """The F1-optimal threshold."""
    return f1_max(labels, scores)[1]


class TestStratifiedFolds:
    """Fold assignment."""

    def test_every_stratum_spread_evenly(self):
        """Each stratum is split over the folds with counts differing by at most one; folds differ by at most one."""
        strata = np.array(["good"] * 20 + ["scratch"] * 7 + ["hole"] * 5)
        fold = stratified_folds(strata, 3, seed=1)
        assert set(fold.tolist()) == {0, 1, 2}
        for value in ("good", "scratch", "hole"):
            counts = np.bincount(fold[strata == value], minlength=3)
            assert counts.max() - counts.min() <= 1
        sizes = np.bincount(fold, minlength=3)
        assert sizes.max() - sizes.min() <= 1

    def test_seeded(self):
        """The same seed gives the same folds, another seed other folds."""
        strata = np.repeat([0, 1], 30)
        assert np.array_equal(stratified_folds(strata, 3, 0), stratified_folds(strata, 3, 0))
        assert not np.array_equal(stratified_folds(strata, 3, 0), stratified_folds(strata, 3, 1))


class TestCrossValidate:
    """Held-out counts."""

    def test_leave_one_out_good_only_by_hand(self):
        """Good scores 1..6, leave-one-out: only the 6 is above the rule fitted on the others (in-sample it is 0 %)."""
        scores = np.arange(1.0, 7.0)
        labels = np.zeros(6, int)
        rates = cross_validate(scores, labels, max_rule, 6)
        # held out 6: others 1..5 give 3 + 1.1 * 2 = 5.2 <= 6; held out 5: others give 3 + 1.1 * 3 = 6.3 > 5.
        assert rates.false_rejects == 1 and rates.false_reject_rate == pytest.approx(1 / 6)
        assert rates.escape_rate is None and rates.n_defect == 0
        assert np.mean(scores >= max_rule(scores, labels)) == 0.0  # the in-sample rate flatters

    def test_matches_direct_count_with_defects(self):
        """F1-optimal rule, 3 folds: equals counting fold by fold with thresholds fitted on the other folds."""
        rng = np.random.default_rng(3)
        scores = np.concatenate([rng.normal(0, 1, 30), rng.normal(2, 1, 12)])
        labels = np.repeat([0, 1], [30, 12])
        strata = np.array(["good"] * 30 + ["a", "b"] * 6)
        rates = cross_validate(scores, labels, f1_rule, 3, strata=strata, seed=5)
        fold = stratified_folds(strata, 3, seed=5)
        fr = esc = 0
        for f in range(3):
            train = fold != f
            t = f1_max(labels[train], scores[train])[1]
            fr += sum(1 for s, y, g in zip(scores, labels, fold, strict=True) if g == f and y == 0 and s >= t)
            esc += sum(1 for s, y, g in zip(scores, labels, fold, strict=True) if g == f and y == 1 and s < t)
        assert (rates.false_rejects, rates.escapes) == (fr, esc)
        assert rates.false_reject_rate == fr / 30 and rates.escape_rate == esc / 12
        assert len(rates.thresholds) == 3

    @pytest.mark.parametrize(("k", "n_defect"), [(1, 5), (4, 3)])
    def test_refuses_impossible_splits(self, k, n_defect):
        """K < 2, or fewer defective images than folds, is refused with the counts in the message."""
        scores = np.zeros(20 + n_defect)
        labels = np.repeat([0, 1], [20, n_defect])
        with pytest.raises(CrossValidationError, match="folds|defective"):
            cross_validate(scores, labels, f1_rule, k)
