"""Metric learning: the part mask, the synthetic classes on the part, CAM and k-NN in the graph, heads, fit, checkpoint."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detectors import registry
from detectors.checkpoint import CheckpointMeta, load, save
from detectors.metric.heads import AdaCos, ArcFace
from detectors.metric.model import MetricNet
from detectors.metric.part import find_parts, mean_image, part_mask
from detectors.metric.synth import distort_patch, draw_line, synthesize
from detectors.scoring import predict

SIZE = 64


def parts_on_a_belt(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc (the part) at a random place on a plain grey belt: BGR images and the true part masks."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        img = np.full((SIZE, SIZE, 3), 60, np.uint8)
        truth = np.zeros((SIZE, SIZE), np.uint8)
        cx, cy = (int(v) for v in rng.integers(16, SIZE - 16, 2))
        cv2.circle(truth, (cx, cy), 12, 1, -1)
        texture = rng.integers(140, 230, (SIZE, SIZE, 3)).astype(np.uint8)
        img[truth == 1] = texture[truth == 1]
        images.append(img)
        masks.append(truth.astype(bool))
    return np.stack(images), np.stack(masks)


class TestPart:
    """Finding the part from the good images alone."""

    def test_finds_an_object_on_a_plain_background(self):
        """Against the average of moving parts, each image's mask covers its disc (IoU > 0.8)."""
        images, truth = parts_on_a_belt(12)
        for found, t in zip(find_parts(images), truth, strict=True):
            assert (found & t).sum() / (found | t).sum() > 0.8

    def test_textures_have_no_part_to_find(self):
        """Random texture crops (no pixel steady across images) and a regular web: the whole image is the part."""
        rng = np.random.default_rng(3)
        noise = rng.integers(0, 255, (8, SIZE, SIZE, 3), dtype=np.uint8)
        assert all(m.all() for m in find_parts(noise))
        web = np.full((SIZE, SIZE, 3), 150, np.uint8)
        web[::8] = 40  # mortar lines: only they differ from the median
        web[:, ::8] = 40
        assert part_mask(web, np.full((SIZE, SIZE), 150, np.float32)).all()

    def test_fixtured_part_and_plain_image_fall_back_to_everything(self):
        """A part that never moves (difference = noise) or a blank frame: the whole image is the part."""
        images, _ = parts_on_a_belt(1)
        same = np.repeat(images, 6, axis=0)
        assert part_mask(same[0], mean_image(same)).all()
        blank = np.full((4, SIZE, SIZE, 3), 100, np.uint8)
        assert part_mask(blank[0], mean_image(blank)).all()


class TestSynth:
    """The self-supervised classes."""

    @pytest.mark.parametrize("make", [draw_line, distort_patch])
    def test_classes_land_on_the_part(self, make):
        """Every changed pixel lies on the part, and something changed, for many draws."""
        images, truth = parts_on_a_belt(6, seed=1)
        rng = np.random.default_rng(2)
        for image, t in zip(images, truth, strict=True):
            for _ in range(5):
                out = make(image, t, rng)
                changed = np.any(out != image, axis=-1)
                assert changed.any() and not (changed & ~t).any()

    def test_normal_is_unchanged_and_bad_labels_refused(self):
        """Class 0 returns the image itself; an index past the classes is an error."""
        images, truth = parts_on_a_belt(1)
        rng = np.random.default_rng(0)
        image = images[0]
        assert synthesize(image, truth[0], 0, rng) is image
        with pytest.raises(ValueError, match="class index"):
            synthesize(images[0], truth[0], 3, rng)


@pytest.fixture(scope="module")
def net():
    """An untrained MetricNet (random trunk) with a bank of 5 random embeddings."""
    torch.manual_seed(0)
    model = MetricNet("efficientnet_lite0", 3, 2, (SIZE, SIZE)).eval()
    model.set_bank(torch.randn(5, model.trunk.channels))
    return model


class TestGraph:
    """What the exported graph computes."""

    def test_cam_averages_to_the_class_cosine(self, net):
        """CAM is the exact spatial decomposition of the cosine logit: its mean over locations equals cosine(g)."""
        x = torch.rand(2, 3, SIZE, SIZE)
        with torch.no_grad():
            f, g = net.embed(x)
            torch.testing.assert_close(net.cam(f, g).mean(dim=(2, 3)), net.cosine(g), rtol=1e-4, atol=1e-5)

    def test_knn_is_brute_force_and_skips_the_input_itself(self, net):
        """Score = 1 - mean of the k best cosines to the bank; a bank entry equal to the input is not counted."""
        x = torch.rand(3, 3, SIZE, SIZE)
        with torch.no_grad():
            _, g = net.embed(x)
            e = torch.nn.functional.normalize(g, dim=1)
            expected = 1 - (e @ net.bank.t()).sort(dim=1, descending=True).values[:, :2].mean(1)
            torch.testing.assert_close(net.knn_distance(g), expected)
            bank = net.bank.clone()
            net.set_bank(torch.cat([bank, g[:1]]))  # the first input is now in the bank
            torch.testing.assert_close(net.knn_distance(g)[:1], expected[:1])
            net.set_bank(bank)


class TestHeads:
    """ArcFace and AdaCos."""

    def test_arcface_penalises_the_true_class(self):
        """With the margin, the loss at a given cosine is higher than plain scaled softmax's."""
        cos = torch.tensor([[0.8, 0.1, -0.2]])
        y = torch.tensor([0])
        plain = torch.nn.functional.cross_entropy(10 * cos, y)
        assert ArcFace(10.0, 0.5)(cos, y) > plain > 0

    def test_adacos_scale_floored_for_few_classes(self):
        """With 2 classes the paper's scale is log(1) = 0: the floor keeps it usable."""
        head = AdaCos(2, min_scale=10.0)
        cos = torch.tensor([[0.9, -0.9], [0.95, -0.8]])
        loss = head(cos, torch.tensor([0, 0]))
        assert head.scale >= 10.0 and torch.isfinite(loss)


def test_fit_and_checkpoint_round_trip(tmp_path):
    """A few training steps on parts; the bank holds every image, the model reloads (bank size from the file)."""
    images, _ = parts_on_a_belt(6)
    params = {"weights": "random", "steps": 3, "batch_size": 4, "k": 2, "classes": 2, "head": "adacos"}
    model, checked, log = registry.train("metric", images, params, (SIZE, SIZE))
    assert log["steps"] == 3 and np.isfinite(log["loss"]).all() and 0 < log["part_share"] < 0.5
    assert model.bank.shape == (6, model.trunk.channels)
    save(tmp_path / "m.pt", model, CheckpointMeta("metric", checked.model_dump(), (SIZE, SIZE), {}, {}, {}))
    loaded, _ = load(tmp_path / "m.pt")
    s0, m0 = predict(model, images)
    s1, m1 = predict(loaded, images)
    np.testing.assert_allclose(s1, s0, atol=1e-6)
    np.testing.assert_allclose(m1, m0, atol=1e-5)
