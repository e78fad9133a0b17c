"""`inspectd check`: the report and its exit code, against a real bundle, a real Mosquitto and real image files."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.contract import ModelOutputs
from edge.tools.check import compare_item, sample_frames, video_io
from tests.bundles import blob_frame, make_tiny_bundle

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
BUILD_INFO = """
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (62.28.101)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    NO
"""


def check(capsys, *args: str) -> tuple[int, str]:
    """Run `inspectd check ARGS`; (exit code, report)."""
    code = main(["check", *args])
    return code, capsys.readouterr().out


def line(out: str, name: str) -> str:
    """The report line of check `name` (status first)."""
    return next(row.strip() for row in out.splitlines() if row[8:34].strip() == name)


def write_config(path: Path, *, bundle: Path, frames: Path, port: int, max_batch: int = 1) -> Path:
    """A config with a folder camera, a local broker port and the bundle."""
    path.write_text(
        f'[model]\nbundle = "{bundle}"\nmax_batch = {max_batch}\n'
        f'[source]\nkind = "folder"\nuri = "{frames}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A tiny 32x32 bundle."""
    make_tiny_bundle(tmp_path / "bundle", height=32, width=32)
    return tmp_path / "bundle"


@pytest.fixture
def frames_dir(tmp_path) -> Path:
    """A folder with one 64x48 PNG."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.png"), blob_frame(48, 64, (5, 5, 10, 10)))
    return folder


class TestBackendChoice:
    """What --backend makes mandatory."""

    def test_onnxruntime_box_passes(self, capsys):
        """On this GPU-less box `--backend onnxruntime` exits 0 and says plainly that TensorRT is absent."""
        code, out = check(capsys, "--backend", "onnxruntime")
        assert code == 0, out
        assert line(out, "ONNX Runtime").startswith("ok") and "CPUExecutionProvider" in out
        if not HAVE_TRT:
            assert line(out, "TensorRT").startswith("info") and "not available" in line(out, "TensorRT")
        assert "GStreamer" in line(out, "OpenCV")

    @pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
    def test_tensorrt_without_tensorrt_fails(self, capsys):
        """`--backend tensorrt` where TensorRT is missing exits non-zero naming TensorRT as the failure."""
        code, out = check(capsys, "--backend", "tensorrt")
        assert code == 1
        assert line(out, "TensorRT").startswith("fail")
        assert "needed for --backend tensorrt" in out and "FAILED" in out

    @pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
    def test_tensorrt_bundle_run_fails_cleanly(self, capsys, bundle_dir):
        """With a bundle, ONNX Runtime still runs and the TensorRT backend's load failure is reported, not raised."""
        code, out = check(capsys, "--backend", "tensorrt", "--bundle", str(bundle_dir), "--frames", "4")
        assert code == 1
        assert line(out, "onnxruntime").startswith("ok")
        assert line(out, "tensorrt").startswith("fail") and "cannot load" in line(out, "tensorrt")


class TestCudaLayer:
    """Which CUDA layer (model.cuda) the report names, with its version."""

    def test_layer_and_version_are_reported(self, capsys, tmp_path):
        """The default layer's package and runtime version; a missing pycuda is named with the way to get it."""
        pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
        version = importlib.metadata.version("cuda-python")
        _, out = check(capsys, "--backend", "tensorrt")
        assert f"model.cuda = 'cuda-python': cuda-python {version} (CUDA runtime " in line(out, "CUDA / GPU")
        config = tmp_path / "config.toml"
        config.write_text('[model]\nbackend = "tensorrt"\ncuda = "pycuda"\n[mqtt]\nenabled = false\n',
                          encoding="utf-8")
        if importlib.util.find_spec("pycuda") is None:
            code, out = check(capsys, "--config", str(config))
            assert code == 1
            assert line(out, "CUDA / GPU").startswith("fail")
            assert "model.cuda = 'pycuda' not available: pycuda is not installed" in line(out, "CUDA / GPU")


class TestBundleRun:
    """Frames through the bundle with each available backend."""

    def test_frames_through_onnxruntime_with_throughput(self, capsys, bundle_dir, frames_dir, broker, tmp_path):
        """A config with camera, broker and bundle: all ok, throughput printed for batch 1 and the max batch."""
        config = write_config(tmp_path / "c.toml", bundle=bundle_dir, frames=frames_dir, port=broker.port, max_batch=4)
        code, out = check(capsys, "--config", str(config), "--frames", "8")
        assert code == 0, out
        ort_line = line(out, "onnxruntime")
        assert ort_line.startswith("ok") and "8 frames" in ort_line
        assert "batch 1 " in ort_line and "batch 4 " in ort_line and "fps" in ort_line
        assert line(out, "camera").startswith("ok") and "64x48 frame" in line(out, "camera")
        assert line(out, "broker").startswith("ok") and "connect accepted" in line(out, "broker")

    def test_tampered_bundle_fails(self, capsys, bundle_dir):
        """A bundle whose model.onnx was changed is a failure with the hash message."""
        (bundle_dir / "model.onnx").write_bytes(b"garbage")
        code, out = check(capsys, "--bundle", str(bundle_dir), "--frames", "2")
        assert code == 1
        assert line(out, "bundle").startswith("fail") and "SHA-256" in out


class TestCameraAndBroker:
    """The --config camera and broker checks."""

    def test_unreachable_camera_and_broker_fail(self, capsys, bundle_dir, tmp_path, broker):
        """A missing image folder and a stopped broker are two failures, each with its reason."""
        port = broker.port
        broker.stop()
        config = write_config(tmp_path / "c.toml", bundle=bundle_dir, frames=tmp_path / "missing", port=port)
        code, out = check(capsys, "--config", str(config), "--frames", "2")
        assert code == 1
        assert line(out, "camera").startswith("fail") and "does not exist" in line(out, "camera")
        assert line(out, "broker").startswith("fail") and "TCP connection failed" in line(out, "broker")

    def test_refused_mqtt_connect_is_a_failure(self, capsys, bundle_dir, frames_dir, tmp_path):
        """A broker that accepts TCP but refuses the MQTT CONNECT (no anonymous access) fails the check."""
        from tests.conftest import Broker

        password_file = tmp_path / "passwd"
        password_file.write_text("", encoding="utf-8")
        strict = Broker(tmp_path / "mosq", listener_options=f"allow_anonymous false\npassword_file {password_file}")
        strict.start()
        try:
            config = write_config(tmp_path / "c.toml", bundle=bundle_dir, frames=frames_dir, port=strict.port)
            code, out = check(capsys, "--config", str(config), "--frames", "2")
        finally:
            strict.stop()
        assert code == 1
        assert line(out, "broker").startswith("fail") and "refused" in line(out, "broker")


class TestPieces:
    """The report's building blocks."""

    def test_throughput_keeps_every_slot_in_flight(self):
        """Throughput goes through the daemon's submit/wait ring: both slots in flight, results in frame order."""
        from edge.backends.ring import RingBackend
        from edge.tools.check import _throughput
        from tests.edge.backends.test_trt import H, NumpyExecutor, W, frames, reference

        class Counting(NumpyExecutor):
            def __init__(self) -> None:
                super().__init__(2, 4, delay=0.002)
                self.in_flight, self.most = set(), 0

            def enqueue(self, slot, n):
                self.in_flight.add(slot)
                self.most = max(self.most, len(self.in_flight))
                super().enqueue(slot, n)

            def synchronize(self, slot):
                super().synchronize(slot)
                self.in_flight.discard(slot)

        executor = Counting()
        backend = RingBackend(executor, name="numpy", max_batch=4, input_shape=(H, W, 3), slots=2)
        images = frames(range(0, 240, 10))
        for batch in (1, 4):
            fps, out = _throughput(backend, images, batch)
            assert fps > 0 and executor.most == 2
            np.testing.assert_allclose(out.score, reference(images)[0], rtol=1e-6)

    def test_video_io_parses_build_information(self):
        """GStreamer/FFmpeg/V4L2 yes-no come from OpenCV's build information text."""
        assert video_io(BUILD_INFO) == {"GStreamer": True, "FFmpeg": True, "V4L2": False}

    def test_sample_frames_are_reproducible_and_mixed(self):
        """The check's frames are the same every run, half of them with a bright blob."""
        a, b = sample_frames(6, 32, 32), sample_frames(6, 32, 32)
        np.testing.assert_array_equal(a, b)
        assert [int(f.max()) == 255 for f in a] == [False, True] * 3

    @pytest.mark.parametrize(
        ("delta", "flip", "status"),
        [
            (0.001, 0, "ok"),  # FP16-sized differences, same verdicts
            (0.2, 0, "fail"),  # maps too far apart
            (0.0, 1, "fail"),  # one verdict of 10 differs (< 99 %)
        ],
    )
    def test_compare_tensorrt_with_onnxruntime(self, delta, flip, status):
        """The comparison fails on a large map difference or on any disagreement above 1 % of frames."""
        score = np.linspace(0.5, 1.5, 10).astype(np.float32)
        amap = np.zeros((10, 1, 4, 4), np.float32)
        mask = np.zeros((10, 1, 4, 4), np.uint8)
        other = score.copy()
        other[:flip] = 2.0 - other[:flip]
        item = compare_item(ModelOutputs(other, amap + delta, mask), ModelOutputs(score, amap, mask))
        assert item.status == status, item.detail
