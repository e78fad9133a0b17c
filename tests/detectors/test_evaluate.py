"""Tests for `inspectd evaluate` and `inspectd benchmark-detectors` on a tiny category."""

from __future__ import annotations

import json

from edge.cli import main


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
        assert grid.stat().st_size > 1000

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
