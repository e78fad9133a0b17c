import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from edge.evaluation import metrics
from edge.evaluation.metrics import aupro, f1_max, image_auroc, pixel_auroc


def brute_force_aupro(masks, maps, fpr_limit=0.3):
    """PRO curve straight from the definition: every distinct value as a threshold, regions via OpenCV."""
    import cv2

    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    good = np.concatenate([a[m == 0] for m, a in zip(masks, maps, strict=False)])
    regions = []
    for m, a in zip(masks, maps, strict=False):
        n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        regions += [a[lab == k] for k in range(1, n)]
    points = [(0.0, 0.0)]
    for t in values[::-1]:
        fpr = float(np.mean(good >= t))
        pro = float(np.mean([np.mean(r >= t) for r in regions]))
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    grid_x = np.concatenate([fprs[fprs <= fpr_limit], [fpr_limit]])
    grid_y = np.interp(grid_x, fprs, pros)  # fprs ascend (weakly): interp is exact on the segments
    return np.trapezoid(grid_y, grid_x) / fpr_limit


def random_case(rng, n=4, size=24):
    masks, maps = [], []
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 3)):
            x, y = rng.integers(0, size - 6, 2)
            mask[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = 1
        amap = rng.random((size, size)) + mask * rng.random() * 0.8
        masks.append(mask)
        maps.append(amap)
    return masks, maps


class TestImageAuroc:
    @pytest.mark.parametrize("seed", range(5))
    def test_matches_sklearn(self, seed):
        """Random scores, with and without ties, agree with scikit-learn to 1e-9."""
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, 200)
        scores = rng.random(200) if seed % 2 else np.round(rng.random(200), 1)  # odd seeds: ties
        assert abs(image_auroc(labels, scores) - roc_auc_score(labels, scores)) < 1e-9

    def test_needs_both_classes(self):
        """One class only is an error, not a silent 0.5."""
        with pytest.raises(ValueError, match="both good"):
            image_auroc([0, 0, 0], [0.1, 0.2, 0.3])


class TestPixelAuroc:
    @pytest.mark.parametrize("seed", range(3))
    def test_matches_sklearn(self, seed):
        """Exact path agrees with scikit-learn over flattened pixels to 1e-9."""
        masks, maps = random_case(np.random.default_rng(seed))
        expected = roc_auc_score(np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps]))
        assert abs(pixel_auroc(masks, maps) - expected) < 1e-9

    def test_subsampled_grid_close(self, monkeypatch):
        """Above the exact limit the quantile grid stays within 1e-3 of the exact value."""
        masks, maps = random_case(np.random.default_rng(7), n=6, size=64)
        exact = pixel_auroc(masks, maps)
        monkeypatch.setattr(metrics, "EXACT_LIMIT", 100)
        monkeypatch.setattr(metrics, "GRID_SIZE", 2048)
        assert abs(pixel_auroc(masks, maps) - exact) < 1e-3

    def test_shape_mismatch(self):
        """A map that does not match its mask is refused with both shapes."""
        with pytest.raises(ValueError, match=r"\(4, 4\)"):
            pixel_auroc([np.zeros((4, 4))], [np.zeros((5, 5))])


class TestAupro:
    @pytest.mark.parametrize("seed", range(6))
    def test_matches_brute_force(self, seed):
        """Agrees with the definition computed threshold by threshold to 1e-3."""
        masks, maps = random_case(np.random.default_rng(100 + seed))
        assert abs(aupro(masks, maps) - brute_force_aupro(masks, maps)) < 1e-3

    def test_perfect_detector(self):
        """Maps that are the masks score 1."""
        masks, _ = random_case(np.random.default_rng(1))
        assert aupro(masks, [m.astype(float) for m in masks]) == pytest.approx(1.0)

    def test_memory_bounded_large(self, monkeypatch):
        """Large inputs take the subsampled grid and still agree with the exact value."""
        masks, maps = random_case(np.random.default_rng(3), n=5, size=96)
        exact = aupro(masks, maps)
        monkeypatch.setattr(metrics, "EXACT_LIMIT", 100)
        assert abs(aupro(masks, maps) - exact) < 2e-3


class TestF1Max:
    def test_matches_sklearn_at_threshold(self):
        """The returned F1 is scikit-learn's F1 at the returned threshold, and no threshold does better."""
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 2, 300)
        scores = rng.random(300) + labels * 0.3
        best, thr = f1_max(labels, scores)
        assert abs(best - f1_score(labels, scores >= thr)) < 1e-9
        assert all(f1_score(labels, scores >= t) <= best + 1e-12 for t in np.unique(scores)[::7])
