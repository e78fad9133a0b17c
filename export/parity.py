"""Parity between the torch model and its ONNX export: the bundle is only written when they agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge.errors import DatasetError
from edge.evaluation.dataset import list_images, read_category, read_image
from export.graph import ExportWrapper
from export.runtime import run_model

MAP_TOLERANCE = 1e-3  # max abs difference of the normalised map
N_IMAGES = 16


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime's outputs are from torch's on the same uint8 images."""

    n_images: int
    source: str  # where the images came from
    max_map_diff: float
    max_score_diff: float
    verdict_mismatches: int
    mask_mismatch_pixels: int

    @property
    def ok(self) -> bool:
        """Map within MAP_TOLERANCE and every pass/fail verdict identical."""
        return self.max_map_diff <= MAP_TOLERANCE and self.verdict_mismatches == 0

    def describe(self) -> str:
        """One line for the operator."""
        return (
            f"{self.n_images} images ({self.source}): max |map diff| {self.max_map_diff:.2e} "
            f"(limit {MAP_TOLERANCE:.0e}), max |score diff| {self.max_score_diff:.2e}, "
            f"{self.verdict_mismatches} verdict mismatches, {self.mask_mismatch_pixels} mask pixels differ"
        )


def check_parity(wrapper: ExportWrapper, onnx_path: Path, images: np.ndarray, source: str) -> ParityReport:
    """Run both on `images` (uint8 NHWC in the wrapper's colour order) and compare normalised outputs."""
    with torch.no_grad():
        t_score, t_map, t_mask = (t.numpy() for t in wrapper.eval()(torch.from_numpy(images)))
    o = run_model(onnx_path, images, batch=3, threads=1)  # batches of 3 and a last of 1: not the traced 2
    return ParityReport(
        n_images=len(images),
        source=source,
        max_map_diff=float(np.max(np.abs(t_map - o.anomaly_map))),
        max_score_diff=float(np.max(np.abs(t_score - o.score))),
        verdict_mismatches=int(np.sum((t_score >= 1.0) != (o.score >= 1.0))),
        mask_mismatch_pixels=int(np.sum(t_mask != o.mask)),
    )


def parity_images(
    category: str,
    size: tuple[int, int],
    *,
    n: int = N_IMAGES,
    datasets_root: Path = Path("var/datasets"),
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """`n` test images of the checkpoint's category (good and defective, spread evenly), else synthetic ones.

    `category` is a folder, or a name looked up under `datasets_root`. Synthetic images are smooth noise with a few
    bright and dark blobs, so both verdicts are likely to occur.
    """
    for root in (Path(category), datasets_root / category) if category else ():
        if (root / "test").is_dir():
            try:
                paths = [s.path for s in read_category(root).test]
            except DatasetError:
                continue
            pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(n, len(paths))).round().astype(int)]
            return np.stack([read_image(p, size) for p in pick]), f"test set of {root}"
        if root.is_dir() and category:
            try:
                paths = list_images(root)
            except DatasetError:
                continue
            return np.stack([read_image(p, size) for p in paths[:n]]), f"images in {root}"
    return synthetic_images(n, size, seed), "synthetic"


def synthetic_images(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth random textures with blobs: uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        base = rng.normal(128, 20, (h // 4 + 1, w // 4 + 1, 3))
        img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
        if i % 2:
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), max(2, min(h, w) // 8)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 255 if i % 4 == 1 else 0
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out
