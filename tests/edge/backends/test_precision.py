"""model.precision: the start-up FP32/INT8 decision, its cache per CPU and bundle, and the forced choices."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.backends import load_backend, precision
from edge.bundle import Bundle, Int8Flavour, load_bundle, write_bundle
from edge.config import ModelConfig
from edge.errors import BundleError
from tests.bundles import make_tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny real bundle without INT8."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"), height=32, width=48)


@pytest.fixture
def with_int8(bundle: Bundle, tmp_path: Path) -> Bundle:
    """The tiny bundle plus a listed, hash-checked INT8 CPU file (the same graph: this is about choosing files)."""
    folder = tmp_path / "q"
    shutil.copytree(bundle.path, folder)
    shutil.copy(folder / "model.onnx", folder / "model_int8_cpu.onnx")
    flavour = Int8Flavour(file="model_int8_cpu.onnx", target="cpu", quant="QDQ U8S8", faster=False)
    return load_bundle(write_bundle(folder, bundle.meta.model_copy(update={"int8": [flavour]})).path)


class Timer:
    """A measure() that returns fixed timings and counts its calls."""

    def __init__(self, fp32_ms: float, int8_ms: float) -> None:
        self.result, self.calls = (fp32_ms, int8_ms), 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        return self.result


def decide(cache: Path, timer: Timer, hashes: tuple[str, str] = ("a" * 64, "b" * 64)) -> precision.Decision:
    """precision.decide for an auto bundle with INT8, on this CPU."""
    return precision.decide("auto", "model.onnx", "model_int8_cpu.onnx", bundle="b", hashes=hashes, cache=cache,
                            runtime="onnxruntime 1", threads=2, batch=1, measure=timer)


def test_auto_measures_once_then_uses_the_cache(tmp_path: Path) -> None:
    """The first start measures and writes both timings; the next reads them back without measuring."""
    cache = tmp_path / "state" / "precision.json"
    timer = Timer(10.0, 6.0)
    first = decide(cache, timer)
    assert (first.precision, first.source, first.fp32_ms, first.int8_ms) == ("int8", "measured", 10.0, 6.0)
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["fp32_ms"] == 10.0 and entry["int8_ms"] == 6.0 and entry["cpu"] == precision.cpu_identity()["model"]
    second = decide(cache, timer)
    assert (second.precision, second.source, timer.calls) == ("int8", "cached", 1)
    assert "INT8 6.00 ms vs FP32 10.00 ms" in second.reason


def test_remeasured_when_cpu_or_bundle_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another CPU model or ISA, or other graph hashes, are cache misses; the old entries stay."""
    cache = tmp_path / "precision.json"
    timer = Timer(10.0, 12.0)
    assert decide(cache, timer).precision == "fp32"  # INT8 slower here
    decide(cache, timer, hashes=("a" * 64, "c" * 64))  # re-calibrated INT8 graph
    assert timer.calls == 2
    real = precision.cpu_identity()
    monkeypatch.setattr(precision, "cpu_identity", lambda: {**real, "model": "AMD EPYC 7B13", "isa": ["avx2"]})
    timer.result = (10.0, 5.0)
    moved = decide(cache, timer)
    assert (moved.precision, moved.source, timer.calls) == ("int8", "measured", 3)
    assert "AMD EPYC 7B13" in moved.reason and len(json.loads(cache.read_text())) == 3


def test_int8_must_win_by_the_margin(tmp_path: Path) -> None:
    """A tie (within MARGIN) keeps FP32, the reference the thresholds were set on."""
    assert decide(tmp_path / "p.json", Timer(10.0, 10.0 * precision.MARGIN + 0.01)).precision == "fp32"


def test_forced_and_missing_int8(tmp_path: Path) -> None:
    """fp32/int8 force a file without measuring; int8 without an INT8 flavour is a BundleError (exit 2)."""
    timer = Timer(1.0, 1.0)
    common = {"bundle": "b", "cache": tmp_path / "p.json", "runtime": "r", "threads": 1, "batch": 1, "measure": timer}
    forced = precision.decide("int8", "model.onnx", "i.onnx", hashes=None, **common)
    assert (forced.file, forced.source) == ("i.onnx", "forced")
    assert precision.decide("fp32", "model.onnx", "i.onnx", hashes=None, **common).file == "model.onnx"
    assert precision.decide("auto", "model.onnx", None, hashes=None, **common).source == "no-int8"
    with pytest.raises(BundleError, match="no INT8 CPU flavour.*inspectd calibrate"):
        precision.decide("int8", "model.onnx", None, hashes=None, **common)
    assert timer.calls == 0 and not (tmp_path / "p.json").exists()


def test_backend_times_both_graphs_at_start_up(with_int8: Bundle, tmp_path: Path) -> None:
    """load_backend with auto really times both sessions on this box, logs it, caches it, and reuses it."""
    config = ModelConfig(threads=1, precision="auto", state_dir=tmp_path / "state")
    backend = load_backend(with_int8, config)
    decision = backend.decision  # type: ignore[attr-defined]
    assert decision.source == "measured" and decision.fp32_ms > 0 and decision.int8_ms > 0
    assert backend.name.endswith(decision.file)
    again = load_backend(with_int8, config).decision  # type: ignore[attr-defined]
    assert again.source == "cached" and (again.fp32_ms, again.int8_ms) == (decision.fp32_ms, decision.int8_ms)


def test_backend_forced_int8_without_flavour(bundle: Bundle, tmp_path: Path) -> None:
    """The backend refuses precision = int8 on a bundle without INT8."""
    with pytest.raises(BundleError, match="no INT8 CPU flavour"):
        load_backend(bundle, ModelConfig(threads=1, precision="int8", state_dir=tmp_path))
