"""The ONNX Runtime backend on a real tiny bundle: contract checks, precision choice, slots and batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.backends import load_backend
from edge.bundle import Bundle, Int8Flavour, load_bundle, write_bundle
from edge.config import ModelConfig
from edge.errors import BundleError
from tests.bundles import blob_frame, make_tiny_bundle, tiny_graph


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny real bundle with a non-square input."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"), height=32, width=48)


class TestOrtBackend:
    """edge.backends.ort."""
    def test_matches_plain_session(self, bundle: Bundle) -> None:
        """Outputs through slots and IO binding equal a plain InferenceSession.run, batched or not."""
        images = np.stack([blob_frame(32, 48, (i, 2, 5, 5) if i % 2 else None) for i in range(5)])
        reference = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"]).run(
            None, {"image": images}
        )
        for max_batch in (1, 2):
            backend = load_backend(bundle, ModelConfig(threads=1, max_batch=max_batch))
            out = backend.infer(images)
            for got, want in zip(out, reference, strict=True):
                np.testing.assert_array_equal(got, want)
            assert backend.input_shape == (32, 48, 3) and "onnxruntime:cpu" in backend.name

    def test_slot_protocol(self, bundle: Bundle) -> None:
        """acquire/submit/wait/release reuse preallocated buffers: outputs are views of the slot's arrays."""
        backend = load_backend(bundle, ModelConfig(threads=1, max_batch=2, slots=2))
        a, b = backend.acquire(), backend.acquire()
        assert a is not b and a.input.shape == (2, 32, 48, 3)
        a.input[0] = blob_frame(32, 48, (0, 0, 4, 4))
        backend.submit(a, 1)
        first = backend.wait(a)
        assert first.score.shape == (1,) and float(first.score[0]) == pytest.approx(2.0)
        assert np.shares_memory(first.anomaly_map, a.outputs[1])
        a.input[0] = blob_frame(32, 48, None)  # same slot and batch size again: the kept binding sees the new pixels
        backend.submit(a, 1)
        assert float(backend.wait(a).score[0]) < 1.0
        a.input[0] = blob_frame(32, 48, (3, 3, 4, 4))
        backend.submit(a, 1)
        assert float(backend.wait(a).score[0]) == pytest.approx(2.0)
        backend.release(a)
        backend.release(b)
        with pytest.raises(ValueError, match="batch of 3"):
            backend.submit(backend.acquire(), 3)

    def test_wrong_model_refused(self, bundle: Bundle, tmp_path: Path) -> None:
        """A model.onnx whose input size differs from bundle.json is refused at load with a BundleError."""
        wrong = tmp_path / "wrong"
        shutil.copytree(bundle.path, wrong)
        onnx.save(tiny_graph(16, 16, 0.5), wrong / "model.onnx")
        meta = bundle.meta.model_copy(update={"files": {"model.onnx": ""}})
        write_bundle(wrong, meta)  # re-hashed: the hash check passes, the contract check must not
        with pytest.raises(BundleError, match="does not match the bundle contract.*image"):
            load_backend(load_bundle(wrong), ModelConfig(threads=1))

    def test_unreadable_model_refused(self, bundle: Bundle, tmp_path: Path) -> None:
        """A model.onnx ONNX Runtime cannot parse (hash re-written to match) is a BundleError naming the file."""
        broken = tmp_path / "broken"
        shutil.copytree(bundle.path, broken)
        (broken / "model.onnx").write_bytes(b"not an ONNX model")
        write_bundle(broken, bundle.meta.model_copy(update={"files": {"model.onnx": ""}}))
        with pytest.raises(BundleError, match="ONNX Runtime cannot load model.onnx"):
            load_backend(load_bundle(broken), ModelConfig(threads=1))

    def test_precision_choice(self, bundle: Bundle, tmp_path: Path) -> None:
        """fp32/int8 force a listed file; an INT8 file missing from bundle.json's hashes is refused."""
        folder = tmp_path / "q"
        shutil.copytree(bundle.path, folder)
        shutil.copy(folder / "model.onnx", folder / "model.int8.cpu.onnx")
        flavour = Int8Flavour(file="model.int8.cpu.onnx", target="cpu", quant="QDQ U8S8")
        with_int8 = load_bundle(write_bundle(folder, bundle.meta.model_copy(update={"int8": [flavour]})).path)
        forced = load_backend(with_int8, ModelConfig(threads=1, precision="int8", state_dir=tmp_path))
        assert forced.name.endswith("model.int8.cpu.onnx")
        assert load_backend(with_int8, ModelConfig(threads=1, precision="fp32")).name.endswith("model.onnx")
        unlisted = with_int8.meta.model_copy(update={"files": {"model.onnx": with_int8.meta.files["model.onnx"]}})
        with pytest.raises(BundleError, match="not listed"):
            load_backend(Bundle(path=folder, meta=unlisted), ModelConfig(threads=1))
