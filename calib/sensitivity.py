"""Mixed precision: which learned blocks may run INT8.

Quantise one block at a time, measure how far the outputs move from FP32, and keep the most sensitive blocks FP32
until the accuracy gate holds. No torch.

The probe images are good images plus copies with a synthetic defect (`stressed`), so the ranking sees both normal
and anomalous activations without touching the labelled evaluation set the gate then judges on. The error is in
the graph's normalised units (1.0 = the image threshold): mean |map - map_fp32| + mean |score - score_fp32|.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.qdq import QuantSpec, quantise_blocks
from edge.backends import ModelOutputs
from edge.log import get_logger
from export.runtime import run_model

log = get_logger(__name__)

Gate = Callable[[Path], bool]  # judges a written Q/DQ graph: True = accurate enough


@dataclass(frozen=True)
class BlockError:
    """How far the outputs move when only `block` is INT8."""

    block: str
    error: float


@dataclass(frozen=True)
class Plan:
    """The outcome of a search: blocks quantised, blocks kept FP32 (most sensitive first) and the ranking used."""

    quantised: tuple[str, ...]
    kept: tuple[str, ...]
    ranking: tuple[BlockError, ...]
    passed: bool


def output_error(reference: ModelOutputs, outputs: ModelOutputs) -> float:
    """Mean absolute difference of the normalised map plus that of the score."""
    amap = float(np.mean(np.abs(outputs.anomaly_map - reference.anomaly_map)))
    return amap + float(np.mean(np.abs(outputs.score - reference.score)))


def rank_blocks(
    prepared: Path,
    blocks: dict[str, list[str]],
    spec: QuantSpec,
    calibration: np.ndarray,
    probe: np.ndarray,
    cache: Path,
    *,
    threads: int = 2,
    optimize: bool = True,
) -> list[BlockError]:
    """Every block's error when it alone is quantised, largest first."""
    reference = run_model(prepared, probe, batch=4, threads=threads)
    errors = []
    with tempfile.TemporaryDirectory(prefix="inspectd-sens-") as tmp:
        staged = Path(tmp) / "one.onnx"
        if not cache.is_file():  # calibrate once, with every block, before quantising them one by one
            _write(prepared, staged, blocks, list(blocks), spec, calibration, cache)
        for block, nodes in blocks.items():
            quantise_blocks(prepared, staged, calibration, spec, nodes, cache)
            outputs = run_model(staged, probe, batch=4, threads=threads, optimize=optimize)
            errors.append(BlockError(block, output_error(reference, outputs)))
    errors.sort(key=lambda e: -e.error)
    log.info("int8_sensitivity", ranking=[(e.block, round(e.error, 5)) for e in errors])
    return errors


def search(
    prepared: Path,
    out: Path,
    blocks: dict[str, list[str]],
    spec: QuantSpec,
    calibration: np.ndarray,
    probe: np.ndarray,
    gate: Gate,
    cache: Path,
    *,
    threads: int = 2,
    optimize: bool = True,
    max_kept: int | None = None,
) -> Plan:
    """Write to `out` the graph with the most blocks INT8 that passes `gate`; `passed` is False if none does.

    First everything learned is quantised; if that fails the gate, blocks are ranked by `rank_blocks` and kept FP32
    one more at a time, most sensitive first, up to `max_kept` (default: half the blocks, beyond which INT8 buys
    little), re-judging each time.
    """
    names = list(blocks)
    ranking: list[BlockError] = []
    limit = len(names) // 2 if max_kept is None else max_kept
    kept: list[str] = []
    while True:
        quantised = [b for b in names if b not in kept]
        _write(prepared, out, blocks, quantised, spec, calibration, cache)
        if quantised and gate(out):
            return Plan(tuple(quantised), tuple(kept), tuple(ranking), passed=True)
        if not ranking:
            ranking = rank_blocks(
                prepared, blocks, spec, calibration, probe, cache, threads=threads, optimize=optimize
            )
        if len(kept) >= min(limit, len(names) - 1):
            return Plan(tuple(quantised), tuple(kept), tuple(ranking), passed=False)
        kept = [e.block for e in ranking[: len(kept) + 1]]


def _write(
    prepared: Path,
    out: Path,
    blocks: dict[str, list[str]],
    quantised: Sequence[str],
    spec: QuantSpec,
    calibration: np.ndarray,
    cache: Path,
) -> None:
    nodes = [n for b in quantised for n in blocks[b]]
    quantise_blocks(prepared, out, calibration, spec, nodes, cache)
