"""Tests for detector checkpoints (written by `inspectd train`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import registry
from detectors.checkpoint import CheckpointError, CheckpointMeta, load, provisional_thresholds, save


class TestCheckpoint:
    """Save and load."""

    def test_round_trip(self, trained):
        """A trained checkpoint loads with weights_only and reproduces the model's outputs and metadata."""
        raw = torch.load(trained, weights_only=True)
        assert raw["detector"] == "padim" and raw["params"]["d"] == 16 and raw["input_size"] == [64, 64]
        model, meta = load(trained)
        assert not model.training
        assert meta.training["images"] == 8 and len(meta.training["hash"]) == 64
        p = meta.provisional
        assert p["image"] > p["offset"] and p["pixel"] > p["offset"]
        x = torch.rand(2, 3, 64, 64)
        again = registry.build("padim", meta.params, (64, 64))
        again.load_state_dict(raw["state_dict"])
        with torch.no_grad():
            torch.testing.assert_close(model(x)[1], again.eval()(x)[1])

    def test_save_then_load_untrained(self, tmp_path):
        """save/load keep every meta field."""
        model = registry.build("padim", {"d": 8, "weights": "random"}, (32, 32))
        meta = CheckpointMeta(
            "padim",
            {"d": 8, "weights": "random"},
            (32, 32),
            {"category": "x"},
            {"offset": 0.0, "image": 1.0, "pixel": 0.5},
            {"m": 1.0},
        )
        save(tmp_path / "c.pt", model, meta)
        _, back = load(tmp_path / "c.pt")
        assert back == meta

    def test_rejects_foreign_file(self, tmp_path):
        """A file that is not an inspectd checkpoint is refused with a message naming it."""
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
        with pytest.raises(CheckpointError, match="not an inspectd checkpoint"):
            load(tmp_path / "other.pt")

    def test_provisional_thresholds_order(self):
        """The offset lies below the pixel and image thresholds for any non-constant training maps."""
        rng = np.random.default_rng(0)
        maps = rng.random((4, 8, 8)).astype(np.float32)
        p = provisional_thresholds(maps.reshape(4, -1).max(1), maps)
        assert p["offset"] < p["pixel"] and p["offset"] < p["image"]
