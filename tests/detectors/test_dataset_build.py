"""Tests for `inspectd dataset build` and the defect implants."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from detectors.dataset_build import TEXTURE_SPECS, Counts, build
from detectors.implants import IMPLANTS, KINDS
from edge.cli import main
from edge.errors import DatasetError
from edge.evaluation.dataset import read_category, read_mask


def _tree(root):
    """Relative path -> bytes of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def clean_crop():
    """A 128 px gravel crop, grey as BGR."""
    import skimage.data

    return cv2.cvtColor(skimage.data.gravel()[:128, :128], cv2.COLOR_GRAY2BGR)


class TestBuild:
    """Building categories through the CLI."""

    def test_same_seed_same_bytes(self, tmp_path):
        """Two builds with one seed write byte-identical trees; another seed writes different images."""
        args = ["--size", "48", "--train", "3", "--test-good", "2", "--test-defective", "5"]
        for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
            assert main(["dataset", "build", str(tmp_path / name), "--seed", seed, "--categories", "grass", *args]) == 0
        a, b, c = (_tree(tmp_path / n) for n in "abc")
        assert a == b
        assert len(a) == 3 + 2 + 5 + 5 + 1  # images, masks, manifest
        assert a["grass/train/good/000.png"] != c["grass/train/good/000.png"]

    def test_layout_reads_back(self, tiny_dataset):
        """The calib reader sees the MVTec layout, one defect type per implant kind, each with a matching mask."""
        cat = read_category(tiny_dataset / "brick")
        assert len(cat.train) == 8
        assert {s.defect_type for s in cat.test if s.label} == set(KINDS)
        for s in cat.test:
            image = cv2.imread(str(s.path))
            assert image.shape == (64, 64, 3)
            if s.label:
                assert read_mask(s, image.shape[:2]).sum() > 0
        manifest = json.loads((tiny_dataset / "brick" / "manifest.json").read_text())
        assert [d["subtle"] for d in manifest["defects"]] == [True] * 5

    def test_elpv_has_labels_without_masks(self, tmp_path):
        """elpv_poly's defective cells have image labels only (no ground_truth, mask_path None); rebuilds match."""
        counts = Counts(train=2, test_good=2, test_defective=3)
        build(tmp_path / "a", ["elpv_poly"], size=32, elpv_counts=counts)
        build(tmp_path / "b", ["elpv_poly"], size=32, elpv_counts=counts)
        assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
        tmp_path = tmp_path / "a"
        cat = read_category(tmp_path / "elpv_poly")
        assert not (tmp_path / "elpv_poly" / "ground_truth").exists()
        assert [s.label for s in cat.test] == [1, 1, 1, 0, 0]
        assert all(s.mask_path is None for s in cat.test)
        assert not cat.has_masks

    def test_refuses_foreign_folder(self, tmp_path):
        """A category folder not made by the builder is never deleted."""
        (tmp_path / "brick").mkdir()
        (tmp_path / "brick" / "precious.png").write_bytes(b"x")
        with pytest.raises(DatasetError, match="not overwriting"):
            build(tmp_path, ["brick"], size=32, counts=Counts(1, 1, 1))
        assert (tmp_path / "brick" / "precious.png").exists()


class TestImplants:
    """Each implant changes pixels only inside the mask it returns."""

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("subtle", [True, False])
    def test_mask_is_exact(self, clean_crop, kind, subtle):
        """Outside the mask the image is untouched; inside, most mask pixels changed."""
        rng = np.random.default_rng(3)
        out, mask = IMPLANTS[kind](clean_crop, rng, subtle)
        assert out.shape == clean_crop.shape and out.dtype == np.uint8
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
        changed = (out != clean_crop).any(axis=2)
        assert not changed[mask == 0].any()
        assert changed[mask == 1].mean() > 0.5

    def test_subtle_is_fainter(self, clean_crop):
        """A subtle stain changes pixel values less than an obvious one."""
        diffs = []
        for subtle in (True, False):
            out, mask = IMPLANTS["stain"](clean_crop, np.random.default_rng(0), subtle)
            diffs.append(np.abs(out.astype(int) - clean_crop)[mask == 1].mean())
        assert diffs[0] < diffs[1] / 2


class TestRegions:
    """Training and test crops of a texture come from disjoint pixels; training from several regions."""

    @pytest.mark.parametrize("name", sorted(TEXTURE_SPECS))
    def test_train_and_test_pixels_are_disjoint(self, name):
        """No training crop can share a pixel with a test crop of the same photograph."""
        spec = TEXTURE_SPECS[name]

        def box(region):
            index, y0, y1, x0, x1 = region
            return index, y0, y1 + spec.crop, x0, x1 + spec.crop

        for train in map(box, spec.train):
            for test in map(box, spec.test):
                same = train[0] == test[0]
                overlap = train[1] < test[2] and test[1] < train[2] and train[3] < test[4] and test[3] < train[4]
                assert not (same and overlap), f"{name}: train {train} overlaps test {test}"
        assert len(spec.train) >= 2 or name == "roof", f"{name}: training crops from one region only"
