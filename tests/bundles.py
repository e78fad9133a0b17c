"""A tiny but real model bundle for daemon, backend, viewer and bench tests (no torch needed).

The ONNX graph keeps the bundle contract (edge/bundle.py) with a rule a test can predict: the anomaly map is the grey
level / 255 / threshold, so bright pixels are "defects". A dark frame passes; a frame with a white blob fails with
a region where the blob is.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.bundle import SCHEMA_VERSION, Bundle, BundleMeta, InputSpec, Thresholds, write_bundle
from edge.config import Config
from edge.contract import INPUT_NAME, OPSET, THRESHOLD_INITIALIZERS


def tiny_graph(height: int, width: int, threshold: float) -> onnx.ModelProto:
    """uint8 NHWC image -> score (B,), anomaly_map (B,1,H,W) float32, mask (B,1,H,W) uint8."""
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [1.0 / (255.0 * threshold)])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["grey"], axes=[3], keepdims=1),
        helper.make_node("Transpose", ["grey"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["nchw", "scale"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("GreaterOrEqual", ["anomaly_map", "one"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["mask"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", height, width, 3])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, height, width]),
            helper.make_tensor_value_info("mask", TensorProto.UINT8, ["batch", 1, height, width]),
        ],
        initializer=[scale, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_tiny_bundle(
    out: Path, *, height: int = 64, width: int = 64, threshold: float = 0.5, name: str = "tiny"
) -> Bundle:
    """Write a calibrated tiny bundle into `out` (created) and return it, hashes and all."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_graph(height, width, threshold), out / "model.onnx")
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
