"""Shared fixtures for detector tests: a tiny built dataset (64 px, a handful of images), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detectors.dataset_build import Counts, build
from edge.cli import main

torch.set_num_threads(1)

TINY_SIZE = 64


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """`brick` at 64 px: 8 training crops, 4 good and 5 defective test crops (one per implant kind)."""
    root = tmp_path_factory.mktemp("datasets")
    build(root, ["brick"], seed=0, size=TINY_SIZE, counts=Counts(train=8, test_good=4, test_defective=5))
    return root


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """A PaDiM checkpoint trained through `inspectd train` on the tiny brick category."""
    out = tmp_path_factory.mktemp("ckpt") / "padim.pt"
    rc = main(
        [
            "train",
            "--detector",
            "padim",
            "--data",
            str(tiny_dataset / "brick"),
            "--out",
            str(out),
            "--size",
            "64",
            "--device",
            "cpu",
            "--param",
            "d=16",
        ]
    )
    assert rc == 0
    return out
