"""SSIM autoencoder: shapes, SSIM, training, reproducibility and ONNX parity on tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_parity import assert_onnx_parity

torch = pytest.importorskip("torch")

from detectors import registry, ssim_ae  # noqa: E402
from detectors.ssim_ae.model import SSIMMap  # noqa: E402
from detectors.training import lr_factor, seed_everything  # noqa: E402

# constant lr: 60 steps are too few for warm-up plus cosine decay to show a falling loss
TINY = {"width": 4, "latent": 8, "patch": 32, "stride": 16, "batch_size": 4, "lr": 3e-3, "schedule": "constant"}


def _stripes(n: int = 3, size: int = 48) -> np.ndarray:
    """Good images: a noisy stripe texture, BGR uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = 128 + 80 * np.sin(xx / 3.0)
    imgs = [np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(n)]
    return np.stack([np.stack([im] * 3, axis=-1) for im in imgs]).astype(np.uint8)


def _build(params: dict, size: tuple[int, int]) -> torch.nn.Module:
    return registry.build("ssim_ae", params, size)


def _fit(model: torch.nn.Module, steps: int, seed: int = 0, max_minutes: float | None = None, images=None) -> dict:
    params = ssim_ae.DETECTOR.make_params({**TINY, "steps": steps})
    ctx = registry.FitContext(seed_everything(seed), torch.device("cpu"), max_minutes=max_minutes, progress=False)
    return ssim_ae.fit(model, _stripes() if images is None else images, params, ctx)


class TestSSIMMap:
    """The conv-based local SSIM."""

    def test_identical_images_score_one(self) -> None:
        """SSIM of an image with itself is 1 everywhere."""
        x = torch.rand(2, 1, 24, 24)
        assert torch.allclose(SSIMMap()(x, x), torch.ones(2, 1, 24, 24), atol=1e-4)

    def test_different_images_score_lower(self) -> None:
        """SSIM of an image with an unrelated one is well below 1."""
        g = torch.Generator().manual_seed(0)
        a, b = torch.rand(1, 1, 24, 24, generator=g), torch.rand(1, 1, 24, 24, generator=g)
        assert SSIMMap()(a, b).mean() < 0.5


class TestSSIMAutoencoder:
    """The SSIMAutoencoder module's eval forward and build checks."""

    @pytest.mark.parametrize(
        ("channels", "residual", "mode", "size"),
        [
            (1, "ssim", "patches", (32, 32)),  # the paper's setting: one patch
            (3, "l2", "patches", (40, 56)),  # RGB, L2 residual, tiles flush with the far edges
            (1, "ssim", "whole", (48, 64)),  # objects: resized to one patch and back
        ],
    )
    def test_eval_forward_shapes(self, channels: int, residual: str, mode: str, size: tuple[int, int]) -> None:
        """Eval forward returns float32 score (B,) and map (B, 1, H, W) at the input size."""
        model = _build({**TINY, "channels": channels, "residual": residual, "mode": mode}, size).eval()
        with torch.no_grad():
            score, amap = model(torch.rand(2, 3, *size))
        assert score.shape == (2,)
        assert amap.shape == (2, 1, *size)
        assert score.dtype == amap.dtype == torch.float32

    def test_tiles_are_averaged_where_they_overlap(self) -> None:
        """The tiled reconstruction is, pixel by pixel, the mean of the reconstructions of the patches covering it."""
        model = _build(TINY, (40, 56)).eval()
        x = torch.rand(2, 1, 40, 56)
        with torch.no_grad():
            got = model.reconstruct_tiled(x)
            total, count = torch.zeros_like(x), torch.zeros_like(x)
            for y in (0, 8):
                for x0 in (0, 16, 24):
                    total[..., y : y + 32, x0 : x0 + 32] += model.reconstruct(x[..., y : y + 32, x0 : x0 + 32])
                    count[..., y : y + 32, x0 : x0 + 32] += 1
        assert sorted(model.tiles) == [(y, x0) for y in (0, 8) for x0 in (0, 16, 24)]
        torch.testing.assert_close(got, total / count)

    def test_latent_is_a_vector(self) -> None:
        """The bottleneck is one latent vector per patch (the paper's dense 1 x 1 x 100), not a feature map."""
        model = _build({**TINY, "latent": 100}, (32, 32)).eval()
        with torch.no_grad():
            assert model.encoder(torch.rand(3, 1, 32, 32)).shape == (3, 100, 1, 1)

    def test_rejects_unknown_residual_and_small_inputs(self) -> None:
        """An unknown residual fails at params time, an input smaller than the patch at build, both with values."""
        with pytest.raises(registry.DetectorError, match="residual='cosine'"):
            _build({"residual": "cosine"}, (32, 32))
        with pytest.raises(ValueError, match="smaller than the patch 128"):
            _build({}, (64, 64))


class TestFit:
    """ssim_ae.fit: training on good images."""

    def test_loss_falls(self) -> None:
        """A few dozen steps on a stripe texture lower the SSIM loss."""
        torch.manual_seed(0)  # initial weights come from torch's global generator
        log = _fit(_build(TINY, (48, 48)), steps=60)
        assert log["steps"] == 60
        assert len(log["loss"]) == 60
        assert np.mean(log["loss"][-5:]) < 0.6 * np.mean(log["loss"][:5])

    def test_reproducible(self) -> None:
        """The same seed gives the same losses and weights."""
        a, b = _build(TINY, (48, 48)), _build(TINY, (48, 48))
        a.load_state_dict(b.state_dict())
        la, lb = _fit(a, steps=3, seed=7), _fit(b, steps=3, seed=7)
        assert la["loss"] == lb["loss"]
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(pa, pb)

    def test_wall_clock_budget_stops(self) -> None:
        """A zero-minute budget stops after the first step."""
        model = _build(TINY, (48, 48))
        log = _fit(model, steps=1000, max_minutes=0.0)
        assert log["steps"] == 1
        assert log["minutes"] >= 0
        assert not model.training

    def test_rejects_float_images(self) -> None:
        """Training images must be uint8 BGR; anything else fails with the found dtype."""
        with pytest.raises(ValueError, match="float64"):
            _fit(_build(TINY, (48, 48)), steps=1, images=np.zeros((1, 48, 48, 3)))


class TestLrFactor:
    """The learning-rate schedule shared by ssim_ae and draem."""

    def test_warmup_then_cosine_floor(self) -> None:
        """The factor ramps up over the warm-up, is ~1 early, and ends at the 2 % floor when the budget is spent."""
        assert lr_factor(0, 0.0, "cosine") == pytest.approx(1 / 20)
        assert lr_factor(50, 0.01, "cosine") == pytest.approx(1.0, abs=1e-3)
        assert lr_factor(500, 1.0, "cosine") == pytest.approx(0.02)
        assert lr_factor(500, 1.0, "constant") == 1.0

    def test_rejects_unknown_schedule(self) -> None:
        """An unknown schedule name fails with the value in the message."""
        with pytest.raises(ValueError, match="linear"):
            lr_factor(0, 0.0, "linear")


class TestOnnx:
    """Export of an SSIMAutoencoder to ONNX."""

    def test_export_parity_dynamic_batch(self, tmp_path: Path) -> None:
        """The ONNX graph (opset 17, dynamic batch) matches torch within 1e-4 at another batch size."""
        assert_onnx_parity(_build(TINY, (32, 32)), tmp_path / "ssim_ae.onnx")
