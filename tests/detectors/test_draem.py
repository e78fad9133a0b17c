"""DRAEM: anomaly synthesis, shapes, training, reproducibility and ONNX parity on tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_parity import assert_onnx_parity

torch = pytest.importorskip("torch")

from detectors import draem, registry  # noqa: E402
from detectors.draem.synth import (  # noqa: E402
    geometric_anomaly,
    line_anomaly,
    perlin_mask,
    perlin_noise,
    synthesize,
)
from detectors.training import seed_everything  # noqa: E402

TINY = {"recon_base": 4, "recon_levels": 3, "disc_base": 4, "disc_levels": 3, "batch_size": 4, "crop_size": 32}


def _texture(n: int = 3, size: int = 48) -> np.ndarray:
    """Good images: a noisy stripe texture, BGR uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(0)
    xx = np.mgrid[:size, :size][1]
    base = 128 + 80 * np.sin(xx / 3.0)
    imgs = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(n)]
    return np.stack([np.stack([im * 0.9, im, im * 0.8], axis=-1) for im in imgs]).astype(np.uint8)


def _build(params: dict, size: tuple[int, int]) -> torch.nn.Module:
    return registry.build("draem", params, size)


def _fit(model: torch.nn.Module, steps: int, seed: int = 0, max_minutes: float | None = None, **over: object) -> dict:
    params = draem.DETECTOR.make_params({**TINY, "steps": steps, **over})
    ctx = registry.FitContext(seed_everything(seed), torch.device("cpu"), max_minutes=max_minutes, progress=False)
    return draem.fit(model, _texture(), params, ctx)


class TestPerlin:
    """Perlin noise and masks: the shape generator for synthetic anomalies."""

    def test_noise_deterministic_and_bounded(self) -> None:
        """The same seed gives the same noise, which stays within [-1, 1] and is not constant."""
        a = perlin_noise((40, 56), (4, 8), np.random.default_rng(3))
        b = perlin_noise((40, 56), (4, 8), np.random.default_rng(3))
        assert a.shape == (40, 56)
        np.testing.assert_array_equal(a, b)
        assert np.abs(a).max() <= 1.0
        assert a.std() > 0.05

    @pytest.mark.parametrize("seed", [0, 1, 2, 3])
    def test_mask_binary_nonempty_deterministic(self, seed: int) -> None:
        """A Perlin mask is float32 {0, 1}, has defect pixels, and is reproducible from its seed."""
        a = perlin_mask((64, 64), np.random.default_rng(seed))
        b = perlin_mask((64, 64), np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32
        assert set(np.unique(a)) <= {0.0, 1.0}
        assert 0 < a.sum() < a.size


class TestSynthesize:
    """Synthetic anomalies: where pixels change and how the mask says so."""

    def _images(self) -> np.ndarray:
        return _texture(2, 64).astype(np.float32) / 255

    def test_no_anomaly_leaves_image(self) -> None:
        """With p_anomaly=0 the image is unchanged and the mask empty."""
        src = self._images()
        img, mask = synthesize(src[0], src, np.random.default_rng(0), p_anomaly=0.0)
        np.testing.assert_array_equal(img, src[0])
        assert mask.sum() == 0

    @pytest.mark.parametrize("seed", range(6))
    def test_changes_only_inside_mask(self, seed: int) -> None:
        """A synthetic anomaly alters pixels only where the mask says, stays in [0, 1], and is reproducible."""
        src = self._images()
        img, mask = synthesize(src[0], src, np.random.default_rng(seed), p_anomaly=1.0)
        img2, mask2 = synthesize(src[0], src, np.random.default_rng(seed), p_anomaly=1.0)
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(mask, mask2)
        assert img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        outside = mask == 0
        np.testing.assert_allclose(img[outside], src[0][outside], atol=1e-6)

    @pytest.mark.parametrize(
        "shares",
        [
            {},  # Perlin mask filled with another image's shuffled, jittered crop
            {"p_geometric": 1.0},  # local rotation / warp
            {"p_line": 1.0},  # thin lines
            {"p_self": 1.0},  # Perlin mask, the image's own pixels with shifted intensity
            {"p_procedural": 1.0},  # Perlin mask, procedural texture
        ],
    )
    def test_each_family_marks_its_pixels(self, shares: dict[str, float]) -> None:
        """Every anomaly family yields a non-empty mask and changes no pixel outside it."""
        src = self._images()
        for seed in range(3):
            img, mask = synthesize(src[0], src, np.random.default_rng(seed), p_anomaly=1.0, **shares)
            assert mask.sum() > 0
            changed = np.abs(img - src[0]).max(axis=-1) > 1e-6
            assert not (changed & (mask == 0)).any()

    def test_line_anomaly_is_thin(self) -> None:
        """A line anomaly covers a small share of the image (thin strokes, not blobs)."""
        src = self._images()
        _, mask = line_anomaly(src[0], np.random.default_rng(0))
        assert 0 < mask.mean() < 0.25

    def test_geometric_anomaly_marks_moved_pixels(self) -> None:
        """A local rotation/warp of a textured image changes pixels, all of them inside a non-empty mask."""
        src = self._images()
        for seed in range(4):
            img, mask = geometric_anomaly(src[0], np.random.default_rng(seed))
            assert mask.sum() > 0
            changed = np.abs(img - src[0]).max(axis=-1) > 1e-6
            assert not (changed & (mask == 0)).any()


class TestDraem:
    """The Draem module's eval forward."""

    @pytest.mark.parametrize(
        ("downscale", "size"),
        [
            (1, (32, 32)),
            (2, (40, 56)),  # half-resolution sub-networks, size not a multiple of the stride
        ],
    )
    def test_eval_forward_shapes(self, downscale: int, size: tuple[int, int]) -> None:
        """Eval forward returns float32 score (B,) and a probability map (B, 1, H, W) in [0, 1] at input size."""
        model = _build({**TINY, "downscale": downscale}, size).eval()
        with torch.no_grad():
            score, amap = model(torch.rand(2, 3, *size))
        assert score.shape == (2,)
        assert amap.shape == (2, 1, *size)
        assert score.dtype == amap.dtype == torch.float32
        assert 0.0 <= float(amap.min()) and float(amap.max()) <= 1.0


class TestFit:
    """draem.fit: training on good images with synthetic anomalies."""

    def test_loss_falls(self) -> None:
        """A few steps with synthetic anomalies lower the reconstruction + focal loss."""
        torch.manual_seed(0)  # initial weights come from torch's global generator
        log = _fit(_build(TINY, (48, 48)), steps=40, lr=3e-3)
        assert log["steps"] == 40
        assert np.mean(log["loss"][-5:]) < 0.7 * np.mean(log["loss"][:5])

    def test_reproducible(self) -> None:
        """The same seed gives the same losses and weights."""
        a, b = _build(TINY, (48, 48)), _build(TINY, (48, 48))
        a.load_state_dict(b.state_dict())
        la, lb = _fit(a, steps=2, seed=5), _fit(b, steps=2, seed=5)
        assert la["loss"] == lb["loss"]
        for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb)

    def test_wall_clock_budget_stops(self) -> None:
        """A zero-minute budget stops after the first step and leaves the model in eval mode."""
        model = _build(TINY, (48, 48))
        log = _fit(model, steps=1000, max_minutes=0.0)
        assert log["steps"] == 1
        assert not model.training


class TestOnnx:
    """Export of a Draem to ONNX."""

    @pytest.mark.parametrize("downscale", [1, 2])
    def test_export_parity_dynamic_batch(self, tmp_path: Path, downscale: int) -> None:
        """The ONNX graph (opset 17, dynamic batch) matches torch within 1e-4 at another batch size."""
        model = _build({**TINY, "downscale": downscale}, (32, 32))
        _fit(model, steps=1)  # moves BatchNorm running stats off their defaults
        assert_onnx_parity(model, tmp_path / "draem.onnx")
