import cv2
import numpy as np
import pytest

from edge.errors import DatasetError
from edge.evaluation.dataset import list_images, read_category, read_image, read_mask, tree_hash


def write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def category(tmp_path):
    """A tiny MVTec-layout category: 3 train, 2 good test, 2 scratch with masks, 1 elpv-style label-only defect."""
    root = tmp_path / "widget"
    img = np.full((32, 40, 3), 100, np.uint8)
    for i in range(3):
        write(root / "train" / "good" / f"{i:03d}.png", img)
    for i in range(2):
        write(root / "test" / "good" / f"{i:03d}.png", img)
        write(root / "test" / "scratch" / f"{i:03d}.png", img)
        mask = np.zeros((32, 40), np.uint8)
        mask[5:9, 5:20] = 255
        write(root / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask)
    write(root / "test" / "crack" / "000.png", img)  # no ground_truth/crack: image label only
    return root


class TestReadCategory:
    def test_layout(self, category):
        """Train, test labels, defect types and mask paths come from the folder layout."""
        cat = read_category(category)
        assert cat.name == "widget" and len(cat.train) == 3
        assert [(s.defect_type, s.label) for s in cat.test] == [("crack", 1), ("good", 0), ("good", 0), ("scratch", 1), ("scratch", 1)]
        assert cat.test[0].mask_path is None and cat.test[3].mask_path.name == "000_mask.png"
        assert cat.has_masks

    def test_missing_mask(self, category):
        """A defect image without its mask, where the type has ground truth, names the expected mask file."""
        (category / "ground_truth" / "scratch" / "001_mask.png").unlink()
        with pytest.raises(DatasetError, match="001_mask.png"):
            read_category(category)

    def test_empty_train(self, tmp_path):
        """An empty train/good folder is refused, naming the folder."""
        (tmp_path / "c" / "train" / "good").mkdir(parents=True)
        with pytest.raises(DatasetError, match="holds no images"):
            read_category(tmp_path / "c")


class TestImages:
    def test_plain_folder_sorted(self, tmp_path):
        """A plain folder of good images is listed in sorted order, other files ignored."""
        for name in ["b.png", "a.jpg", "notes.txt"]:
            (tmp_path / name).write_bytes(b"x")
        assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]

    def test_unreadable(self, tmp_path):
        """A truncated file gives a DatasetError naming it."""
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG not really")
        with pytest.raises(DatasetError, match="bad.png"):
            read_image(bad)

    @pytest.mark.parametrize(
        "image",
        [
            np.full((8, 8), 7, np.uint8),  # grey -> 3 channels
            np.full((8, 8), 7 << 8, np.uint16),  # 16-bit -> 8-bit
            np.full((8, 8, 4), 7, np.uint8),  # BGRA -> BGR
        ],
    )
    def test_converted_to_bgr8(self, tmp_path, image):
        """Grey, 16-bit and BGRA images become uint8 BGR."""
        write(tmp_path / "i.png", image)
        out = read_image(tmp_path / "i.png", size=(4, 6))
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8 and out[0, 0, 0] == 7

    def test_mask_size_mismatch(self, category):
        """A mask whose size differs from its image is refused with both sizes."""
        sample = read_category(category).test[3]
        with pytest.raises(DatasetError, match="40x32"):
            read_mask(sample, (64, 64))
        assert read_mask(sample, (32, 40)).sum() == 4 * 15

    def test_tree_hash_changes_with_content(self, category):
        """The training-data hash changes when a byte changes."""
        files = read_category(category).train
        before = tree_hash(files)
        write(files[0], np.zeros((32, 40, 3), np.uint8))
        assert tree_hash(files) != before
