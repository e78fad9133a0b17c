"""Parity torch vs ONNX Runtime for every real detector, untrained, with tiny parameters (export, not accuracy)."""

import importlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edge.bundle import load_bundle
from export.build import export_bundle
from export.parity import MAP_TOLERANCE, synthetic_images

torch.set_num_threads(1)
SIZE = (64, 64)
TINY = {
    "ssim_ae": {"width": 8, "depth": 2, "latent": 4},
    "padim": {"weights": "random", "d": 10},
    "draem": {"recon_base": 4, "recon_levels": 2, "disc_base": 4, "disc_levels": 2, "pool": 5},
}


class TestDetectorParity:
    """Every registered detector exports with parity."""

    @pytest.mark.parametrize("name", sorted(TINY))
    def test_parity(self, name, tmp_path):
        """Each detector exports with its post-processing, and ONNX Runtime matches torch within 1e-3."""
        module = importlib.import_module(f"detectors.{name}")
        torch.manual_seed(0)
        model = module.build(TINY[name], SIZE).eval()
        images = synthetic_images(16, SIZE)
        with torch.no_grad():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float()[:, [2, 1, 0]] / 255
            scores = model(x)[0].numpy()
        median = float(np.median(scores))  # half the images fail: verdicts are compared on both sides
        meta = SimpleNamespace(
            detector=name,
            params=TINY[name],
            input_size=SIZE,
            training={},
            provisional={"offset": median - 1.0, "image": median, "pixel": median},  # unit scale: raw diff = map diff
            metrics={},
        )
        bundle, report = export_bundle(model, meta, tmp_path / name, images=images)
        assert report.max_map_diff <= MAP_TOLERANCE, report.describe()
        assert report.verdict_mismatches == 0, report.describe()
        assert load_bundle(bundle.path).meta.detector == name
