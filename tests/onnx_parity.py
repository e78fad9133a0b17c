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
