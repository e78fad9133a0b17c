"""`inspectd demo` from an existing bundle: stream, real Mosquitto, the real daemon, MQTT subscriber, summary, report.

Steps 1-3 (dataset build, training, export, calibration) are covered by their own packages' tests; here the tiny
bundle stands in for a trained one (the demo reuses any bundle that loads), so the wiring after them runs in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.tools import demo
from tests.bundles import blob_frame, make_tiny_bundle

SIZE = 96
BLOB = (30, 40, 24, 20)


def make_category(root: Path, n: int = 8) -> None:
    """An MVTec-layout category: dark frames are good, frames with a white blob are the defect type `blob`."""
    for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), blob_frame(SIZE, SIZE))
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), blob_frame(SIZE, SIZE))
        cv2.imwrite(str(root / "test/blob" / f"{i:03d}.png"), blob_frame(SIZE, SIZE, BLOB))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        x, y, w, h = BLOB
        mask[y : y + h, x : x + w] = 255
        cv2.imwrite(str(root / "ground_truth/blob" / f"{i:03d}_mask.png"), mask)


def demo_args(workdir: Path, frames: int, *extra: str) -> argparse.Namespace:
    """The parsed arguments of `inspectd demo --workdir WORKDIR --category cat --frames N --quiet ...`."""
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    argv = ["--workdir", str(workdir), "--category", "cat", "--frames", str(frames), "--quiet", *extra]
    return parser.parse_args(argv)


class TestDemo:
    """The demo after its offline steps, against a real broker and the real daemon."""

    def test_reuses_bundle_and_reports_against_truth(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """With a loadable bundle the demo skips training, judges every frame, and counts escapes against the truth."""
        make_category(tmp_path / "data" / "cat")
        make_tiny_bundle(tmp_path / "bundle", threshold=0.5)
        assert demo.run(demo_args(tmp_path, 12)) == 0
        out = capsys.readouterr().out
        assert "reusing bundle" in out and "inspectd demo summary" in out
        summary = json.loads((tmp_path / "summary.json").read_text())
        truth = json.loads((tmp_path / "stream" / "truth.json").read_text())
        assert summary["verdicts"] == summary["frames"] == len(truth) == 12
        assert summary["seq_gaps"] == 0 and summary["error"] == 0
        bad = sum(t["label"] for t in truth)
        assert 0 < bad < 12
        assert (summary["fail"], summary["escapes"], summary["false_rejects"]) == (bad, 0, 0)
        assert summary["latency_ms"]["p50"] is not None and summary["throughput_fps"] > 0
        report = (tmp_path / "report.html").read_text()
        assert report.count("<figure>") == bad and "data:image/jpeg;base64," in report
        sheet = cv2.imread(str(tmp_path / "failed.png"))
        assert sheet is not None and sheet.shape[1] == 1040

    def test_escapes_counted(self, tmp_path: Path) -> None:
        """A bundle whose threshold passes everything turns every defective frame into a counted escape."""
        make_category(tmp_path / "data" / "cat")
        make_tiny_bundle(tmp_path / "bundle", threshold=2.0)  # blob map = 255/255/2 = 0.5 < 1: all pass
        assert demo.run(demo_args(tmp_path, 8)) == 0
        summary = json.loads((tmp_path / "summary.json").read_text())
        truth = json.loads((tmp_path / "stream" / "truth.json").read_text())
        assert summary["pass"] == 8 and summary["escapes"] == sum(t["label"] for t in truth) > 0
        assert summary["false_rejects"] == 0

    def test_embedded_broker(self, tmp_path: Path) -> None:
        """Without Mosquitto the demo runs on the embedded amqtt broker (MQTT 3.1.1), all verdicts delivered."""
        assert importlib.util.find_spec("amqtt"), "the embedded broker needs the demo extra, which `make setup` installs"
        make_category(tmp_path / "data" / "cat")
        make_tiny_bundle(tmp_path / "bundle", threshold=0.5)
        assert demo.run(demo_args(tmp_path, 8, "--broker", "embedded")) == 0
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert "amqtt" in summary["broker"]
        assert summary["verdicts"] == 8 and summary["escapes"] == summary["false_rejects"] == 0
