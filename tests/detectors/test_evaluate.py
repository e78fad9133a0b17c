"""Tests for `inspectd evaluate` and `inspectd benchmark-detectors` on a tiny category."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from edge.cli import main


def check_grid(path: Path, n_good: int, n_defective: int, cell: int = 160) -> None:
    """Check the grid's pixels, not just that a file exists.

    One row per picked test image (2 good, then up to 6 defective, none twice); columns input | map over the input |
    map >= threshold | ground truth; the thresholded pixels are where the overlay is hot.
    """
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    n_rows = min(2, n_good) + min(6, n_defective)
    assert img is not None and img.shape == (18 + n_rows * cell, 4 * cell, 3)
    rows = [img[18 + r * cell + 20 : 18 + (r + 1) * cell] for r in range(n_rows)]  # below each row's label
    cells = [[row[:, c * cell : (c + 1) * cell].astype(int) for c in range(4)] for row in rows]
    inputs = [c[0] for c in cells]
    assert all(not np.array_equal(a, b) for i, a in enumerate(inputs) for b in inputs[i + 1 :]), "an image shown twice"
    hot, cold = [], []
    for r, (image, overlay, pred, truth) in enumerate(cells):
        for binary in (pred, truth):
            assert set(np.unique(binary)) <= {0, 255} and (binary == binary[..., :1]).all(), "masks are black/white"
        assert truth.any() == (r >= min(2, n_good)), f"row {r}: ground truth must be empty exactly for good images"
        assert np.abs(overlay - image).mean() > 10, f"row {r}: no heatmap over the input"
        red_minus_blue = overlay[..., 2] - overlay[..., 0]
        hot += list(red_minus_blue[pred[..., 0] == 255])
        cold += list(red_minus_blue[pred[..., 0] == 0])
    assert hot and cold
    assert np.mean(hot) > np.mean(cold) + 40, "pixels at or over the threshold must show red on the jet scale"


class TestEvaluateAndBenchmark:
    """The evaluate and benchmark-detectors commands end to end."""

    def test_evaluate_writes_json_and_grid(self, trained, tiny_dataset, tmp_path):
        """The evaluate command prints metrics, writes the JSON keys the issue names and a PNG grid."""
        js, grid = tmp_path / "m.json", tmp_path / "g.png"
        rc = main(
            [
                "evaluate",
                "--ckpt",
                str(trained),
                "--data",
                str(tiny_dataset / "brick"),
                "--json",
                str(js),
                "--grid",
                str(grid),
            ]
        )
        assert rc == 0
        result = json.loads(js.read_text())
        for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold", "ms_per_image"):
            assert isinstance(result[key], float), key
        assert 0 <= result["image_auroc"] <= 1 and 0 <= result["aupro"] <= 1
        assert result["n_good"] == 4 and result["n_defective"] == 5
        check_grid(grid, result["n_good"], result["n_defective"])

    def test_benchmark_table(self, tiny_dataset, tmp_path):
        """benchmark-detectors trains and evaluates each detector asked for and writes one Markdown row each."""
        out = tmp_path / "table.md"
        rc = main(
            [
                "benchmark-detectors",
                "--data",
                str(tiny_dataset),
                "--minutes",
                "0.2",
                "--out",
                str(out),
                "--work",
                str(tmp_path / "work"),
                "--detectors",
                "padim",
                "--size",
                "64",
            ]
        )
        assert rc == 0
        table = out.read_text()
        assert "| padim | brick |" in table and "mean image AUROC" in table

    def test_benchmark_variants_and_paired_latency(self, tiny_dataset, tmp_path, capsys):
        """--variants adds rows named DETECTOR[params] (+ distortion table); --paired-latency times them interleaved."""
        out, work = tmp_path / "table.md", tmp_path / "work"
        variants = ["variation[smooth=0]", "variation[smooth=3,channels=3]"]
        args = ["benchmark-detectors", "--data", str(tiny_dataset), "--minutes", "inf", "--size", "64"]
        assert main([*args, "--out", str(out), "--work", str(work), "--variants", *variants]) == 0
        table = out.read_text()
        for name in variants:
            assert f"| {name} | brick |" in table
        assert "| variation | brick |" not in table  # only the variants were asked for
        assert "| detector | category | image AUROC | distortion |" in table
        rows = json.loads(out.with_suffix(".json").read_text())
        assert {r["detector"] for r in rows} == set(variants) and all(r["train_steps"] == 8 for r in rows)
        ckpts = [str(work / "brick" / f"{name}.pt") for name in variants]
        assert main(["benchmark-detectors", "--paired-latency", *ckpts, "--rounds", "3"]) == 0
        printed = capsys.readouterr().out
        assert "interleaved rounds" in printed and f"| variation ({ckpts[0]}) |" in printed and "| 1.00 |" in printed

    def test_bank_size_rows(self, tiny_dataset, tmp_path):
        """--bank-sizes: one patchcore fit at the largest bank, a row per size, each checkpoint with that many rows."""
        out = tmp_path / "table.md"
        args = ["benchmark-detectors", "--data", str(tiny_dataset), "--out", str(out), "--work", str(tmp_path / "w")]
        rc = main([*args, "--detectors", "padim", "--size", "64", "--bank-sizes", "16", "32", "--param", "padim:d=8"])
        assert rc == 0
        table = out.read_text()
        assert "| patchcore[16] | brick |" in table and "| patchcore[32] | brick |" in table
        assert "Pretrained weights: padim, patchcore" in table
        from detectors.checkpoint import load

        assert load(tmp_path / "w" / "brick" / "patchcore[16].pt")[0].bank.shape[0] == 16
        rows = json.loads(out.with_suffix(".json").read_text())
        assert all(r["ort_ms_per_image"] > 0 and len(r["load_average"]) == 3 for r in rows)
