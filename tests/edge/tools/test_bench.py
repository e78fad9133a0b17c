"""`inspectd bench` on the tiny bundle: shape of the results only (speed is measured, never asserted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.cli import main
from tests.bundles import make_tiny_bundle

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto not installed (apt-get install mosquitto)",
)

PHASE_KEYS = {"frames", "wall_s", "throughput_fps", "latency_ms", "cpu_cores", "rss_start_mb", "rss_end_mb",
              "peak_rss_mb"}


class TestBench:
    """inspectd bench end to end on the tiny bundle with a temporary Mosquitto."""

    def test_json_report(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """One run writes bare/daemon/naive results and both ratios, all positive, and prints the ratios."""
        bundle = tmp_path / "bundle"
        make_tiny_bundle(bundle)
        out = tmp_path / "bench.json"
        code = main(["bench", "--bundle", str(bundle), "--frames", "12", "--json", str(out),
                     "--detector-label", "tiny-test"])
        assert code == 0
        result = json.loads(out.read_text(encoding="utf-8"))
        assert result["label"] == "tiny-test"
        for phase in ("bare", "daemon", "naive"):
            assert PHASE_KEYS <= set(result[phase]), phase
            assert result[phase]["throughput_fps"] > 0
            assert result[phase]["rss_end_mb"] > 0
            assert set(result[phase]["latency_ms"]) == {"p50", "p95", "p99", "mean"}
            assert result[phase]["latency_ms"]["p99"] > 0
        assert result["daemon"]["frames"] == 12, "every verdict reached the broker's subscriber"
        assert result["daemon"]["delivered"] is True
        assert result["daemon"]["verdicts"] == {"pass": 12, "fail": 0, "error": 0}
        assert result["ratio_daemon_over_bare"] > 0
        assert result["ratio_daemon_over_naive"] > 0
        assert result["daemon"]["cpu_ms_per_frame_steady"] > 0 and result["cpu_ratio_bare_over_daemon"] > 0
        assert [set(r) for r in result["rounds_cpu_ms_per_frame"]] == [{"bare", "daemon"}]
        assert result["rss_start_mb"] > 0 and result["rss_end_mb"] > 0 and result["peak_rss_mb"] > 0
        printed = capsys.readouterr().out
        assert "daemon/bare" in printed and "daemon/naive" in printed
        assert result["precision"] == "fp32" and "no INT8" in result["precision_reason"]  # the tiny bundle has none
        assert "precision fp32" in printed

    def test_images_folder_and_bad_frames(self, tmp_path: Path) -> None:
        """Frames can come from a folder (cycled to N); --frames below 2 is refused with exit code 2."""
        import cv2

        from tests.bundles import blob_frame

        bundle = tmp_path / "bundle"
        make_tiny_bundle(bundle)
        images = tmp_path / "images"
        images.mkdir()
        cv2.imwrite(str(images / "dark.png"), blob_frame(64, 64))
        cv2.imwrite(str(images / "blob.png"), blob_frame(64, 64, (10, 10, 12, 12)))
        out = tmp_path / "bench.json"
        assert main(["bench", "--bundle", str(bundle), "--frames", "6", "--images", str(images),
                     "--json", str(out)]) == 0
        result = json.loads(out.read_text(encoding="utf-8"))
        assert result["daemon"]["verdicts"] == {"pass": 3, "fail": 3, "error": 0}
        assert main(["bench", "--bundle", str(bundle), "--frames", "1"]) == 2
