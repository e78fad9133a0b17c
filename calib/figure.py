"""The calibration evidence as one PNG: score histograms with the threshold line, ROC curve, confusion matrix.

This is what a line engineer looks at before trusting a threshold: how far the good and defective score
distributions overlap and where the threshold cuts them, what other operating points the ROC curve offers, and how
many parts of each kind the chosen threshold passes and fails. Scores are drawn on the bundle's normalised scale, so
the threshold is the 1.0 the daemon compares against. Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.crossval import FoldRates
from edge.evaluation.metrics import image_auroc, roc_curve

THRESHOLD_COLOUR = "#0000ff"  # used for nothing else in the figure, so tests (and eyes) find the line
GOOD_COLOUR = "#2ca02c"
DEFECT_COLOUR = "#d62728"
THRESHOLD = 1.0  # normalised scale


@dataclass(frozen=True)
class Evidence:
    """Where the figure went and where, in its pixels, the threshold line was drawn (x column, y span)."""

    path: Path
    threshold_x: int
    threshold_y: tuple[int, int]


def draw_evidence(
    path: Path,
    good: np.ndarray,
    defect: np.ndarray | None,
    *,
    title: str,
    rates: FoldRates | None = None,
    dpi: int = 100,
) -> Evidence:
    """Write the evidence PNG for normalised good/defect image scores (threshold 1.0); return where the line is."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build box; must come before pyplot
    import matplotlib.pyplot as plt

    good = np.asarray(good, dtype=np.float64)
    defect = None if defect is None or len(defect) == 0 else np.asarray(defect, dtype=np.float64)
    fig, (ax_hist, ax_roc, ax_cm) = plt.subplots(1, 3, figsize=(15, 4.6), dpi=dpi)
    _histograms(ax_hist, good, defect)
    _roc(ax_roc, good, defect)
    _confusion(ax_cm, good, defect)
    subtitle = _rates_line(good, defect, rates)
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    fig.canvas.draw()
    # Where the threshold line landed, in image pixels (matplotlib's display origin is bottom-left).
    height = fig.canvas.get_width_height()[1]
    (x0, y0), (_, y1) = ax_hist.transData.transform(
        [(THRESHOLD, ax_hist.get_ylim()[0]), (THRESHOLD, ax_hist.get_ylim()[1])]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Evidence(path, round(x0), (round(height - y1), round(height - y0)))


def _histograms(ax, good: np.ndarray, defect: np.ndarray | None) -> None:
    values = good if defect is None else np.concatenate([good, defect])
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), THRESHOLD)
    pad = 0.05 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, 41)
    ax.hist(good, bins=bins, color=GOOD_COLOUR, alpha=0.6, label=f"good ({len(good)})")
    if defect is not None:
        ax.hist(defect, bins=bins, color=DEFECT_COLOUR, alpha=0.6, label=f"defective ({len(defect)})")
    ax.axvline(THRESHOLD, color=THRESHOLD_COLOUR, linewidth=2.5, label="threshold (1.0)", zorder=10)  # over the legend
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel("image score (normalised: fail at >= 1.0)")
    ax.set_ylabel("images")
    ax.set_title("score histograms")
    ax.legend(loc="upper right", fontsize=8)


def _roc(ax, good: np.ndarray, defect: np.ndarray | None) -> None:
    ax.set_title("ROC")
    ax.set_xlabel("false-reject rate (good parts failed)")
    ax.set_ylabel("catch rate (defective parts failed)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    if defect is None:
        ax.text(0.5, 0.5, "no defect samples:\nthe ROC needs --defects", ha="center", va="center")
        return
    scores = np.concatenate([good, defect])
    labels = np.concatenate([np.zeros(len(good), int), np.ones(len(defect), int)])
    fpr, tpr, _ = roc_curve(labels, scores)
    area = image_auroc(labels, scores)
    ax.plot(fpr, tpr, color="black", linewidth=1.5, label=f"AUROC {area:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.plot(
        [np.mean(good >= THRESHOLD)],
        [np.mean(defect >= THRESHOLD)],
        marker="o",
        markersize=8,
        color="black",
        linestyle="none",
        label="chosen threshold",
    )
    ax.legend(loc="lower right", fontsize=8)


def _confusion(ax, good: np.ndarray, defect: np.ndarray | None) -> None:
    rows = [("good", good)] + ([("defective", defect)] if defect is not None else [])
    counts = np.array([[np.sum(s < THRESHOLD), np.sum(s >= THRESHOLD)] for _, s in rows], dtype=np.int64)
    share = counts / counts.sum(axis=1, keepdims=True)
    ax.imshow(share, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")
    for i in range(counts.shape[0]):
        for j in range(2):
            ax.text(j, i, f"{counts[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center", fontsize=11)
    ax.set_xticks([0, 1], ["pass", "fail"])
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_xlabel("verdict at the threshold")
    ax.set_ylabel("truth")
    ax.set_title("confusion matrix (images given)")


def _rates_line(good: np.ndarray, defect: np.ndarray | None, rates: FoldRates | None) -> str:
    fr = f"in-sample false-reject {100 * np.mean(good >= THRESHOLD):.1f}% of {len(good)}"
    if defect is not None:
        fr += f", escape {100 * np.mean(defect < THRESHOLD):.1f}% of {len(defect)}"
    if rates is not None:
        fr += f"; {rates.folds}-fold out-of-sample false-reject {100 * rates.false_reject_rate:.1f}%"
        if rates.escape_rate is not None:
            fr += f", escape {100 * rates.escape_rate:.1f}%"
    return fr
