"""A tiny but real model bundle for daemon, backend, viewer and bench tests.

The ONNX graph is made by the same code as every real bundle (export/graph.py: the uint8 input cast first, the
detector, the PostProcess thresholds, the mask through float), so what the daemon and backend tests run is what
`inspectd export` writes, and TensorRT's parser rules are checked on it (export/trt_rules.py). Only the detector is
tiny, with a rule a test can predict: the anomaly map is the grey level / 255 / threshold, so bright pixels are
"defects". A dark frame passes; a frame with a white blob fails with a region where the blob is.
"""

from __future__ import annotations

import functools
import tempfile
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edge.bundle import SCHEMA_VERSION, Bundle, BundleMeta, InputSpec, Thresholds, write_bundle
from edge.config import Config
from edge.contract import OPSET, THRESHOLD_INITIALIZERS
from export.graph import ExportWrapper, PostProcess, export_onnx
from export.trt_rules import check_trt_graph


class Brightness(nn.Module):
    """The tiny detector: raw map = mean of the RGB channels in [0, 1], score = the map's maximum."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), anomaly_map (B, 1, H, W)), raw."""
        amap = x.mean(dim=1, keepdim=True)
        return amap.amax(dim=(1, 2, 3)), amap


@functools.cache
def _tiny_onnx(height: int, width: int, threshold: float) -> bytes:
    """The exported graph's bytes (exported once per size and threshold per test process)."""
    wrapper = ExportWrapper(Brightness(), PostProcess(0.0, threshold, threshold))
    with tempfile.TemporaryDirectory(prefix="tiny-bundle-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(wrapper, path, height, width)
        problems = check_trt_graph(path)
        assert not problems, problems
        return path.read_bytes()


def tiny_graph(height: int, width: int, threshold: float) -> onnx.ModelProto:
    """uint8 NHWC image -> score (B,), anomaly_map (B,1,H,W) float32, mask (B,1,H,W) uint8."""
    return onnx.load_from_string(_tiny_onnx(height, width, float(threshold)))


def make_tiny_bundle(
    out: Path, *, height: int = 64, width: int = 64, threshold: float = 0.5, name: str = "tiny"
) -> Bundle:
    """Write a calibrated tiny bundle into `out` (created) and return it, hashes and all."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(_tiny_onnx(height, width, float(threshold)))
    meta = BundleMeta(
        schema_version=SCHEMA_VERSION,
        name=name,
        detector="tiny-brightness",
        detector_params={"threshold": threshold},
        input=InputSpec(height=height, width=width),
        opset=OPSET,
        thresholds=Thresholds(image=threshold, pixel=threshold, offset=0.0, method="fixed: test bundle", calibrated=True),
        files={"model.onnx": ""},
    )
    return write_bundle(out, meta)


def blob_frame(height: int, width: int, box: tuple[int, int, int, int] | None = None, level: int = 20) -> np.ndarray:
    """A dark BGR frame, with a white rectangle `box` = (x, y, w, h) when given (a "defect")."""
    frame = np.full((height, width, 3), level, np.uint8)
    if box is not None:
        x, y, w, h = box
        frame[y : y + h, x : x + w] = 255
    return frame


def tiny_daemon_config(tmp_path: Path, broker: Any, frames: list[np.ndarray]) -> Config:
    """A daemon config for tests: the tiny bundle, a looping folder of `frames` paced at 50 fps, the test broker."""
    bundle = make_tiny_bundle(tmp_path / "bundle")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    config = Config()
    config.model.bundle = bundle.path
    config.model.threads = 1
    config.source.uri = str(folder)
    config.source.loop = True
    config.source.fps = 50.0
    config.mqtt.host, config.mqtt.port = broker.host, broker.port
    config.mqtt.spool_dir = tmp_path / "spool"
    config.mqtt.client_id = f"inspectd-{uuid.uuid4().hex[:8]}"
    return config


def read_thresholds(onnx_path: Path) -> dict[str, float]:
    """The threshold initializers' values in a graph, by Thresholds field name (what calibration wrote)."""
    model = onnx.load(str(onnx_path))
    by_name = {init.name: init for init in model.graph.initializer}
    return {f: float(numpy_helper.to_array(by_name[n])) for f, n in THRESHOLD_INITIALIZERS.items() if n in by_name}
