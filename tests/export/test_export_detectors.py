"""Every registered detector, untrained, with tiny parameters: export parity with torch and TensorRT's parser rules.

The detectors come from the registry (`detectors.registry`), each with the `tiny` params it declares, so a new
detector is covered the day it registers.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectors import registry
from edge.bundle import load_bundle
from export.build import export_bundle
from export.parity import MAP_TOLERANCE, synthetic_images
from export.trt_rules import check_trt_graph

torch.set_num_threads(1)
SIZE = (64, 64)


class TestDetectorParity:
    """Every registered detector exports with parity, into a graph TensorRT's ONNX parser takes."""

    @pytest.mark.parametrize("name", registry.names())
    def test_parity(self, name, tmp_path):
        """Each detector exports with parity (ONNX Runtime within 1e-3 of torch) into a graph TensorRT parses."""
        tiny = dict(registry.get(name).tiny)
        torch.manual_seed(0)
        model = registry.build(name, tiny, SIZE).eval()
        images = synthetic_images(16, SIZE)
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float()[:, [2, 1, 0]] / 255
            scores = model(x)[0].numpy()
        median = float(np.median(scores))  # half the images fail: verdicts are compared on both sides
        meta = SimpleNamespace(
            detector=name,
            params=tiny,
            input_size=SIZE,
            training={},
            provisional={"offset": median - 1.0, "image": median, "pixel": median},  # unit scale: raw diff = map diff
            metrics={},
        )
        bundle, report = export_bundle(model, meta, tmp_path / name, images=images)
        assert report.max_map_diff <= MAP_TOLERANCE, report.describe()
        assert report.verdict_mismatches == 0, report.describe()
        assert load_bundle(bundle.path).meta.detector == name
        assert check_trt_graph(bundle.onnx_path) == []
