"""Image datasets on disk: the MVTec-AD category layout, and a plain folder of good images. numpy + OpenCV only.

MVTec-AD layout of one category:

    <root>/train/good/*.png
    <root>/test/good/*.png
    <root>/test/<defect_type>/*.png
    <root>/ground_truth/<defect_type>/<stem>_mask.png   (optional per defect type: image labels only without it)

Errors name the folder or file and what was wrong, because the person reading them is setting up a line, not
debugging Python.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    """One test image: label 0 good, 1 defective; `mask_path` None when there is no pixel ground truth."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class Category:
    """One MVTec-style category: good training images and labelled test samples."""

    root: Path
    name: str
    train: list[Path]
    test: list[Sample]

    @property
    def has_masks(self) -> bool:
        """True when any defective sample has a pixel mask (pixel metrics make sense)."""
        return any(s.mask_path is not None for s in self.test if s.label == 1)


def list_images(folder: Path | str, pattern: str = "*") -> list[Path]:
    """Sorted image files in `folder` matching `pattern`.

    Raises:
        DatasetError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        msg = f"image folder {folder} does not exist"
        raise DatasetError(msg)
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        msg = f"image folder {folder} holds no images matching {pattern!r} ({kinds})"
        raise DatasetError(msg)
    return files


def read_category(root: Path | str) -> Category:
    """Read an MVTec-AD category folder.

    Raises:
        DatasetError: train/good or test is missing or empty, or a defect type's ground_truth folder lacks a mask
            for one of its images.
    """
    root = Path(root)
    train = list_images(root / "train" / "good")
    test_dir = root / "test"
    if not test_dir.is_dir():
        msg = f"dataset {root}: no test folder (expected {test_dir}/good and {test_dir}/<defect_type>)"
        raise DatasetError(msg)
    samples: list[Sample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        label = 0 if type_dir.name == "good" else 1
        gt_dir = root / "ground_truth" / type_dir.name
        for image in list_images(type_dir):
            mask = None
            if label and gt_dir.is_dir():
                mask = gt_dir / f"{image.stem}_mask.png"
                if not mask.is_file():
                    msg = f"dataset {root}: {image} has no mask (expected {mask})"
                    raise DatasetError(msg)
            samples.append(Sample(path=image, label=label, defect_type=type_dir.name, mask_path=mask))
    if not samples:
        msg = f"dataset {root}: test folder {test_dir} holds no images"
        raise DatasetError(msg)
    return Category(root=root, name=root.name, train=train, test=samples)


def read_image(path: Path | str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as BGR uint8 (H, W, 3), grey and 16-bit images converted; resized to `size` = (h, w) if given.

    Raises:
        DatasetError: the file is missing or not a readable image.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        msg = f"cannot read image {path} (missing, truncated or not an image)"
        raise DatasetError(msg)
    if image.dtype == np.uint16:
        image = (image.astype(np.uint16, copy=False) >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def read_mask(sample: Sample, shape: tuple[int, int]) -> np.ndarray:
    """The sample's ground-truth mask as uint8 {0, 1} of `shape` (the image's native (h, w)); zeros if none.

    Raises:
        DatasetError: the mask cannot be read or its size differs from the image's.
    """
    if sample.mask_path is None:
        return np.zeros(shape, np.uint8)
    mask = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        msg = f"cannot read mask {sample.mask_path}"
        raise DatasetError(msg)
    if mask.shape != tuple(shape):
        msg = (
            f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {sample.path} is "
            f"{shape[1]}x{shape[0]}; masks must match their image pixel for pixel"
        )
        raise DatasetError(msg)
    return (mask > 127).astype(np.uint8)


def tree_hash(paths: list[Path]) -> str:
    """SHA-256 over the sorted file names and bytes: identifies the training data in a bundle's metadata."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
