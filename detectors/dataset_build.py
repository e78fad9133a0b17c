"""`inspectd dataset build OUT`: MVTec-layout benchmark categories from real images that pip packages ship.

- `elpv_poly`: electroluminescence images of polycrystalline solar cells (`elpv-dataset`). Train on cells with
  defect probability 0; test on held-out probability-0 cells (good) and probability-1 cells (`test/defective`, image
  labels only, no masks). Monocrystalline cells are never read: they are kept for independent evaluation.
- Texture categories (`brick`, `grass`, `gravel` from scikit-image, `roof`, `paving` from `mvtb-data`): training crops
  and test crops come from disjoint regions of the source photographs; defects (detectors/implants.py) are implanted
  into held-out crops with exact masks, about half of them subtle. walls-r.png is the stereo partner of walls-l.png,
  so it only contributes training crops taken well left of the test region (stereo shift ~550 px).

Deterministic: one RNG per category seeded from (seed, category name), PNG writes are deterministic, so the same seed
gives the same bytes, whichever other categories are built alongside.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DatasetError

TEXTURES = ("brick", "grass", "gravel", "roof", "paving")
CATEGORIES = ("elpv_poly", *TEXTURES)
DEFAULT_CATEGORIES = ("elpv_poly", "brick", "grass", "roof", "paving")
MANIFEST = "manifest.json"

Region = tuple[int, int, int, int, int]  # (source image index, y0, y1, x0, x1): crop top-left corners stay inside


@dataclass(frozen=True)
class TextureSpec:
    """Where a texture category's crops come from; regions are in source pixels, crop is the source crop side."""

    load: Callable[[], list[np.ndarray]]
    crop: int
    train: tuple[Region, ...]
    test: tuple[Region, ...]
    source: str


def _skimage(name: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import skimage.data

        grey = getattr(skimage.data, name)()
        return [cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR) if grey.ndim == 2 else grey[..., ::-1].copy()]

    return load


def _mvtb(*names: str) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        import mvtbdata

        folder = Path(mvtbdata.__file__).parent / "images"
        images = []
        for name in names:
            image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
            if image is None:
                msg = f"mvtb-data image {folder / name} is missing or unreadable; reinstall mvtb-data"
                raise DatasetError(msg)
            images.append(image)
        return images

    return load


# skimage textures are 512x512, in four 256x256 quadrants: training crops (192 px) come from three of them (top-left,
# top-right, bottom-left), test crops from the fourth, so training sees the photograph's variation (lighting, scale)
# from several regions rather than one strip, and never a test pixel.
_SK_TRAIN: tuple[Region, ...] = ((0, 0, 64, 0, 64), (0, 0, 64, 256, 320), (0, 256, 320, 0, 64))
_SK_TEST: tuple[Region, ...] = ((0, 256, 320, 256, 320),)

TEXTURE_SPECS: dict[str, TextureSpec] = {
    "brick": TextureSpec(_skimage("brick"), 192, _SK_TRAIN, _SK_TEST, "skimage.data.brick (CC0)"),
    "grass": TextureSpec(_skimage("grass"), 192, _SK_TRAIN, _SK_TEST, "skimage.data.grass (CC0)"),
    "gravel": TextureSpec(_skimage("gravel"), 192, _SK_TRAIN, _SK_TEST, "skimage.data.gravel (CC0)"),
    # roof.png 2009x1668: slates below the tower's shadow; train left of x=1450, test right of x=1500.
    "roof": TextureSpec(
        _mvtb("roof.png"),
        256,
        ((0, 1050, 1668 - 256, 570, 1450 - 256),),
        ((0, 1050, 1668 - 256, 1500, 2009 - 256),),
        "mvtb-data roof.png",
    ),
    # walls-l/-r.png 3264x2448: block paving in the bottom rows. Lighting and the herringbone's angle change across
    # the image, so the test band (walls-l x 1900-2700) sits between two training bands (x < 1500 and x >= 2800), and
    # walls-r (its view shifted ~550 px left) gives training crops from x < 900 only: both images on the training side.
    "paving": TextureSpec(
        _mvtb("walls-l.png", "walls-r.png"),
        384,
        (
            (0, 1650, 2448 - 384, 0, 1500 - 384),
            (0, 1650, 2448 - 384, 2800, 3264 - 384),
            (1, 1700, 2448 - 384, 0, 900 - 384),
        ),
        ((0, 1750, 2448 - 384, 1900, 2700 - 384),),
        "mvtb-data walls-l.png + walls-r.png",
    ),
}


@dataclass(frozen=True)
class Counts:
    """How many images each split gets; defective test images cycle through the implant kinds."""

    train: int = 100
    test_good: int = 20
    test_defective: int = 30


def category_rng(seed: int, category: str) -> np.random.Generator:
    """RNG for one category, independent of which other categories are built."""
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


def _crop(images: list[np.ndarray], regions: tuple[Region, ...], crop: int, size: int, rng: np.random.Generator):
    region = regions[int(rng.integers(len(regions)))]  # regions weigh equally, so a narrow band still counts
    index, y0, y1, x0, x1 = region
    y = int(rng.integers(y0, y1 + 1))
    x = int(rng.integers(x0, x1 + 1))
    patch = images[index][y : y + crop, x : x + crop]
    if patch.shape[:2] != (crop, crop):
        msg = f"crop at ({x}, {y}) of source {index} is {patch.shape[:2]}, expected {crop}x{crop}: bad region table"
        raise DatasetError(msg)
    interpolation = cv2.INTER_AREA if crop > size else cv2.INTER_CUBIC
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        msg = f"cannot write {path}"
        raise DatasetError(msg)


def build_texture(root: Path, name: str, *, seed: int, size: int, counts: Counts) -> dict:
    """Write one texture category; returns its manifest."""
    from detectors.implants import IMPLANTS, KINDS

    spec = TEXTURE_SPECS[name]
    rng = category_rng(seed, name)
    images = spec.load()
    for i in range(counts.train):
        _write(root / "train" / "good" / f"{i:03d}.png", _crop(images, spec.train, spec.crop, size, rng))
    for i in range(counts.test_good):
        _write(root / "test" / "good" / f"{i:03d}.png", _crop(images, spec.test, spec.crop, size, rng))
    test = []
    for i in range(counts.test_defective):
        kind = KINDS[i % len(KINDS)]
        subtle = (i // len(KINDS)) % 2 == 0
        clean = _crop(images, spec.test, spec.crop, size, rng)
        image, mask = IMPLANTS[kind](clean, rng, subtle)
        stem = f"{i:03d}_subtle" if subtle else f"{i:03d}"
        _write(root / "test" / kind / f"{stem}.png", image)
        _write(root / "ground_truth" / kind / f"{stem}_mask.png", mask * 255)
        test.append({"file": f"test/{kind}/{stem}.png", "defect": kind, "subtle": subtle, "pixels": int(mask.sum())})
    return {
        "category": name,
        "source": spec.source,
        "seed": seed,
        "size": size,
        "train": counts.train,
        "test_good": counts.test_good,
        "defects": test,
    }


@functools.lru_cache(maxsize=1)
def _load_elpv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from elpv_dataset.utils import load_dataset

    images, probs, types = load_dataset()
    return np.asarray(images), np.asarray(probs), np.asarray(types)


def build_elpv(root: Path, *, seed: int, size: int, counts: Counts) -> dict:
    """Write `elpv_poly`: probability-0 poly cells for training and as good tests, probability-1 as defective."""
    images, probs, types = _load_elpv()
    poly = np.asarray(types) == "poly"  # never the mono cells: kept for independent evaluation
    good = np.flatnonzero(poly & (np.asarray(probs) == 0))
    bad = np.flatnonzero(poly & (np.asarray(probs) == 1))
    rng = category_rng(seed, "elpv_poly")
    good = rng.permutation(good)
    bad = rng.permutation(bad)
    need = counts.train + counts.test_good
    if need > len(good) or counts.test_defective > len(bad):
        msg = (
            f"elpv_poly has {len(good)} good and {len(bad)} defective poly cells, "
            f"asked for {need} and {counts.test_defective}"
        )
        raise DatasetError(msg)

    def resize(index: int) -> np.ndarray:
        return cv2.resize(images[index], (size, size), interpolation=cv2.INTER_AREA)

    for i, index in enumerate(good[: counts.train]):
        _write(root / "train" / "good" / f"{i:03d}.png", resize(index))
    for i, index in enumerate(good[counts.train : need]):
        _write(root / "test" / "good" / f"{i:03d}.png", resize(index))
    for i, index in enumerate(bad[: counts.test_defective]):
        _write(root / "test" / "defective" / f"{i:03d}.png", resize(index))
    return {
        "category": "elpv_poly",
        "source": "elpv-dataset, type poly; prob 0 good, prob 1 defective (no masks)",
        "seed": seed,
        "size": size,
        "train": counts.train,
        "test_good": counts.test_good,
        "test_defective": counts.test_defective,
    }


def build(
    out: Path,
    categories: list[str],
    *,
    seed: int = 0,
    size: int = 256,
    counts: Counts | None = None,
    elpv_counts: Counts | None = None,
) -> list[Path]:
    """Build each category under `out`, replacing an earlier build of it; returns the category folders."""
    counts = counts or Counts()
    elpv_counts = elpv_counts or Counts(train=200, test_good=50, test_defective=50)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        msg = f"unknown categories {unknown}; expected some of {list(CATEGORIES)}"
        raise DatasetError(msg)
    roots = []
    for name in categories:
        root = out / name
        if root.exists():
            if not (root / MANIFEST).exists():
                msg = f"{root} exists and was not built by `inspectd dataset build` (no {MANIFEST}); not overwriting"
                raise DatasetError(msg)
            shutil.rmtree(root)
        if name == "elpv_poly":
            manifest = build_elpv(root, seed=seed, size=size, counts=elpv_counts)
        else:
            manifest = build_texture(root, name, seed=seed, size=size, counts=counts)
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        roots.append(root)
    return roots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `build OUT` and its options."""
    parser.add_argument("action", choices=["build"], help="what to do (only `build` so far)")
    parser.add_argument("out", type=Path, help="output folder; one MVTec-layout folder per category")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--size", type=int, default=256, help="side of the square images written (px)")
    parser.add_argument(
        "--categories",
        nargs="+",
        default=list(DEFAULT_CATEGORIES),
        choices=CATEGORIES,
        metavar="NAME",
        help=f"categories to build, of {', '.join(CATEGORIES)}",
    )
    parser.add_argument("--train", type=int, default=None, help="training images per category (default 100, elpv 200)")
    parser.add_argument("--test-good", type=int, default=None, help="good test images (default 20, elpv 50)")
    parser.add_argument("--test-defective", type=int, default=None, help="defective test images (default 30, elpv 50)")


def run(args: argparse.Namespace) -> int:
    """Build the requested categories and print where they went."""
    base, elpv = Counts(), Counts(train=200, test_good=50, test_defective=50)
    overrides = {
        k: v
        for k, v in {"train": args.train, "test_good": args.test_good, "test_defective": args.test_defective}.items()
        if v is not None
    }
    counts = Counts(**{**base.__dict__, **overrides})
    elpv_counts = Counts(**{**elpv.__dict__, **overrides})
    for root in build(
        args.out, list(args.categories), seed=args.seed, size=args.size, counts=counts, elpv_counts=elpv_counts
    ):
        n = sum(1 for p in root.rglob("*.png"))
        print(f"{root}: {n} PNG files")
    return 0
