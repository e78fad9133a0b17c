"""PatchCore: greedy k-center coreset, in-graph nearest neighbour, fit, checkpoint and export."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx_parity import assert_bundle_parity

from detectors import registry
from detectors.checkpoint import CheckpointMeta, load, save
from detectors.implants import IMPLANTS
from detectors.patchcore.coreset import kcenter_greedy
from detectors.scoring import predict
from edge.evaluation.dataset import read_category, read_image


def _naive_greedy(x: np.ndarray, k: int, start: int) -> list[int]:
    """The textbook greedy k-center: add the point farthest from the chosen ones, updating every distance."""
    min_d = np.full(len(x), np.inf)
    out, idx = [], start
    for _ in range(k):
        out.append(idx)
        min_d = np.minimum(min_d, ((x - x[idx]) ** 2).sum(1))
        idx = int(np.argmax(min_d))
    return out


def _radius(x: np.ndarray, centers) -> float:
    return float(np.sqrt(((x[:, None] - x[list(centers)][None]) ** 2).sum(-1).min(1).max()))


class TestCoreset:
    """kcenter_greedy against brute force."""

    @pytest.mark.parametrize(("batch", "candidates"), [(1, 10**6), (8, 16), (64, 100)])
    def test_same_choice_as_the_naive_greedy(self, batch, candidates):
        """Batched updates and candidate sets change the cost, not the choice: same indices as the naive loop."""
        x = torch.from_numpy(np.random.default_rng(1).normal(size=(600, 12)))
        got = kcenter_greedy(x, 60, projection=0, seed=2, batch=batch, candidates=candidates).numpy()
        assert got.tolist() == _naive_greedy(x.numpy(), 60, int(got[0]))

    def test_each_pick_is_the_farthest_point(self):
        """k-center property: every chosen point was (one of) the farthest from those chosen before it."""
        x = np.random.default_rng(3).normal(size=(300, 5)).astype(np.float32)
        got = kcenter_greedy(torch.from_numpy(x), 30, projection=0, candidates=32, batch=4).tolist()
        for i in range(1, len(got)):
            d = np.sqrt(((x[:, None] - x[got[:i]][None]) ** 2).sum(-1).min(1))
            assert d[got[i]] >= d.max() - 1e-4
        assert len(set(got)) == len(got)

    def test_within_twice_the_optimal_radius(self):
        """On a tiny set the greedy covering radius is at most 2x the brute-force optimum (Gonzalez's bound)."""
        x = np.random.default_rng(4).normal(size=(14, 3))
        best = min(_radius(x, c) for c in itertools.combinations(range(len(x)), 3))
        got = kcenter_greedy(torch.from_numpy(x), 3, projection=0).tolist()
        assert _radius(x, got) <= 2 * best + 1e-9

    def test_projection_keeps_the_greedy_sane(self):
        """With the paper's random projection the chosen coreset still covers the full-dim set far better than random."""
        rng = np.random.default_rng(5)
        x = (rng.normal(size=(40, 1, 200)) + 0.1 * rng.normal(size=(40, 25, 200))).reshape(-1, 200)
        got = kcenter_greedy(torch.from_numpy(x).float(), 40, projection=32).tolist()
        random_pick = rng.choice(len(x), 40, replace=False)
        assert _radius(x, got) < _radius(x, random_pick)

    def test_bad_size_is_refused(self):
        """K outside 1..N names the valid range."""
        with pytest.raises(ValueError, match=r"1\.\.10"):
            kcenter_greedy(torch.zeros(10, 2), 11)


class TestNearestNeighbour:
    """The distance computed inside the graph."""

    def test_onnx_graph_equals_brute_force(self, tmp_path):
        """ONNX Runtime's chunked matmul-form distances equal torch.cdist's brute-force minimum."""
        model = registry.build("patchcore", {"weights": "random", "chunk": 64}, (32, 32)).eval()
        gen = torch.Generator().manual_seed(0)
        model.set_bank(torch.randn(200, model.dim, generator=gen))  # 200 rows: four chunks, the last partial

        class Nearest(torch.nn.Module):
            def forward(self, patches: torch.Tensor) -> torch.Tensor:
                return model.nearest(patches)

        patches = torch.randn(3, 16, model.dim, generator=gen)
        path = tmp_path / "nn.onnx"
        torch.onnx.export(
            Nearest(),
            (patches[:1],),
            str(path),
            input_names=["p"],
            output_names=["d"],
            dynamic_axes={"p": {0: "b"}, "d": {0: "b"}},
            opset_version=17,
            dynamo=False,
        )
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"p": patches.numpy()})[0]
        brute = torch.cdist(patches.double(), model.bank.double()).amin(-1).numpy()
        np.testing.assert_allclose(got, brute, atol=2e-3, rtol=1e-4)


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    """PatchCore (ImageNet EfficientNet-Lite0, 20 % coreset) fitted on the tiny brick category at 64 px."""
    cat = read_category(tiny_dataset / "brick")
    images = np.stack([read_image(p, (64, 64)) for p in cat.train])
    model, params, log = registry.train("patchcore", images, {"coreset": 0.2}, (64, 64), progress=False)
    return model, params, log, cat


class TestFit:
    """Fitting, scoring, checkpoints."""

    def test_bank_is_the_coreset_size(self, fitted):
        """8 images x 8 x 8 patches at 20 %: 103 bank rows of strides 8 + 16 (40 + 112 channels)."""
        model, _, log, _ = fitted
        assert log["patches"] == 8 * 64 and log["bank"] == 103
        assert model.bank.shape == (103, 152)
        torch.testing.assert_close(model.bank_sq, (model.bank**2).sum(1))

    def test_training_patches_sit_in_the_bank(self, fitted):
        """A bank row is its own nearest neighbour: training images score near zero at their coreset patches."""
        model, _, _, cat = fitted
        images = np.stack([read_image(p, (64, 64)) for p in cat.train])
        with torch.no_grad():
            emb = model.features(torch.from_numpy(images[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255)
            d = model.nearest(emb.flatten(2).transpose(1, 2))
        assert float(d.min()) < 1e-2 and float(d.median()) < float(d.max())

    def test_defects_score_higher_where_they_are(self, fitted):
        """Obvious implants raise good crops' scores, and the map is higher inside the defect than outside."""
        model, _, _, cat = fitted
        clean = np.stack([read_image(s.path, (64, 64)) for s in cat.test if s.label == 0])
        rng = np.random.default_rng(0)
        implanted = [IMPLANTS[kind](image, rng, False) for image in clean for kind in ("stain", "hole", "scratch")]
        clean_scores, _ = predict(model, clean)
        bad_scores, bad_maps = predict(model, np.stack([image for image, _ in implanted]))
        inside = [m[k == 1].mean() > m[k == 0].mean() for m, (_, k) in zip(bad_maps, implanted, strict=True)]
        assert (bad_scores > np.repeat(clean_scores, 3)).mean() >= 0.75 and np.mean(inside) >= 0.75

    def test_checkpoint_round_trip(self, fitted, tmp_path):
        """The bank's size comes back from the checkpoint (weights_only load) and the outputs are identical."""
        model, params, _, _ = fitted
        meta = CheckpointMeta("patchcore", params.model_dump(), (64, 64), {}, {"offset": 0, "image": 1, "pixel": 1})
        save(tmp_path / "pc.pt", model, meta)
        back, back_meta = load(tmp_path / "pc.pt")
        assert back.bank.shape == model.bank.shape and back_meta.params["coreset"] == 0.2
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(back(x).anomaly_map, model(x).anomaly_map)

    def test_trained_model_exports_with_parity(self, fitted, tmp_path):
        """The fitted model goes through the bundle path: ONNX Runtime matches torch within 1e-3, same verdicts."""
        model, params, _, cat = fitted
        images = np.stack([read_image(s.path, (64, 64)) for s in cat.test])
        assert_bundle_parity(model, "patchcore", params.model_dump(), images, tmp_path / "bundle")
