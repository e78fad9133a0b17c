"""Shared check for detector tests: a model exports to ONNX (opset 17, dynamic batch) and matches torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def assert_onnx_parity(model: torch.nn.Module, path: Path, size: int = 32, atol: float = 1e-4) -> None:
    """Export at batch 1, run ONNX Runtime at batch 3, compare (score, map) with the torch model in eval mode."""
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.rand(1, 3, size, size),),
            str(path),
            input_names=["x"],
            output_names=["score", "map"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"x": {0: "b"}, "score": {0: "b"}, "map": {0: "b"}},
        )
        x = torch.rand(3, 3, size, size)
        score, amap = model(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    o_score, o_map = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(o_score, score.numpy(), atol=atol)
    np.testing.assert_allclose(o_map, amap.numpy(), atol=atol)


def assert_bundle_parity(model: torch.nn.Module, detector: str, params: dict, images: np.ndarray, out: Path) -> None:
    """A trained detector through the bundle path: ONNX Runtime within 1e-3 of torch, same verdicts, TRT rules hold.

    The image threshold sits between the two middle scores, so both verdicts occur and none is a tie.
    """
    from detectors.checkpoint import CheckpointMeta
    from detectors.scoring import predict
    from export.build import export_bundle
    from export.parity import MAP_TOLERANCE
    from export.trt_rules import check_trt_graph

    scores = np.sort(predict(model, images)[0])
    mid = float(scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    size = tuple(images.shape[1:3])
    meta = CheckpointMeta(detector, params, size, {}, {"offset": mid - 1, "image": mid, "pixel": mid})
    bundle, report = export_bundle(model, meta, out, images=images)
    assert report.max_map_diff <= MAP_TOLERANCE and report.verdict_mismatches == 0, report.describe()
    assert bundle.meta.detector == detector
    assert check_trt_graph(bundle.onnx_path) == []
