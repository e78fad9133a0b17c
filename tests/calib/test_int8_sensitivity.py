"""The mixed-precision search on a small model with one planted sensitive block."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from calib.int8 import stressed
from calib.qdq import QuantSpec, block_of, fp32_ops, learned_blocks, prepare, quantise_blocks
from calib.sensitivity import output_error, rank_blocks, search
from export.build import export_bundle
from export.runtime import run_model
from tests.export.tinydet import SIZE, good_image, tiny_meta

CPU = QuantSpec("QUInt8", "QInt8", symmetric=False)


class _Pair(nn.Module):
    """Two 1x1 convolutions; `planted` puts an outlier channel between them that cancels in FP32."""

    def __init__(self, channels: int, planted: bool) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 1)
        self.second = nn.Conv2d(channels, channels, 1)
        if planted:
            with torch.no_grad():  # channel 0 x1000 into the hidden tensor, x1/1000 out of it: same function in FP32,
                self.first.weight[0] *= 1000.0  # but one per-tensor 8-bit scale for the hidden tensor now rounds
                self.first.bias[0] *= 1000.0  # every other channel to zero
                self.second.weight[:, 0] /= 1000.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """First -> ReLU -> second."""
        return self.second(torch.relu(self.first(x)))


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = _Pair(8, planted=False)
        self.b = _Pair(8, planted=True)
        self.c = _Pair(8, planted=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(torch.relu(self.stem(x)))))


class PlantedDetector(nn.Module):
    """Map = channel mean of |features|; the hidden tensor of block `b` is the one 8 bits cannot carry."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _Body()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw score (max of the map) and map."""
        amap = self.body(x - 0.5).abs().mean(dim=1, keepdim=True)
        return amap.amax(dim=(1, 2, 3)), amap


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The planted detector exported as a bundle, then prepared for quantisation."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    images = np.stack([good_image(rng) for _ in range(8)])
    bundle, _ = export_bundle(PlantedDetector(), tiny_meta(), root / "bundle", images=images)
    out = root / "prepared.onnx"
    prepare(bundle.onnx_path, out)
    return out


@pytest.fixture(scope="module")
def images():
    """Good images and copies with a synthetic defect (calibration and probe)."""
    rng = np.random.default_rng(1)
    good = np.stack([good_image(rng, SIZE) for _ in range(8)])
    return np.concatenate([good, stressed(good)])


def test_blocks_are_submodules_of_the_detector():
    """Blocks are detector sub-modules at depth 3; wrapper and detector-level nodes belong to none."""
    assert block_of("/detector/backbone/stages.0.1/_expand_conv/Conv") == "/detector/backbone/stages.0.1"
    assert block_of("/detector/body/b/first/Conv") == "/detector/body/b"
    assert block_of("/detector/backbone/Sub") == "/detector/backbone"
    assert block_of("/detector/MatMul") is None  # detector-level arithmetic (a distance, smoothing)
    assert block_of("/Cast") is None and block_of("/post/Sub") is None and block_of("Conv_12") is None


def test_ranking_names_the_planted_block(prepared, images, tmp_path):
    """Quantising block b alone moves the outputs most."""
    blocks, skipped = learned_blocks(onnx.load(str(prepared)))
    assert set(blocks) == {"/detector/body/a", "/detector/body/b", "/detector/body/c"}
    assert "read 3 channel(s)" in skipped["/detector/body/stem"]  # the RGB stem stays FP32 by rule
    ranking = rank_blocks(prepared, blocks, CPU, images, images, tmp_path / "cache.json")
    assert ranking[0].block == "/detector/body/b"
    assert ranking[0].error > 5 * ranking[1].error


def test_search_keeps_the_planted_block_fp32(prepared, images, tmp_path):
    """The search quantises the rest, keeps b FP32 (no Q/DQ fused into it) and passes a gate all-INT8 fails."""
    blocks, skipped = learned_blocks(onnx.load(str(prepared)))
    reference = run_model(prepared, images)
    judged = []

    def gate(path):
        error = output_error(reference, run_model(path, images))
        judged.append(error)
        return error < 0.02

    out = tmp_path / "int8.onnx"
    plan = search(prepared, out, blocks, CPU, images, images, gate, tmp_path / "cache.json")
    assert plan.passed and plan.kept == ("/detector/body/b",)
    assert judged[0] >= 0.02 > judged[-1]  # all-INT8 failed, the plan passed
    assert set(plan.quantised) == set(blocks) - {"/detector/body/b"}
    assert sorted(fp32_ops(out, blocks["/detector/body/b"])) == sorted(
        n for n in blocks["/detector/body/b"] if "Conv" in n
    )
    assert fp32_ops(out, blocks["/detector/body/a"]) == []  # a quantised block really runs integer kernels


class _BankDetector(nn.Module):
    """A Sequential body (a PDN-like layer stack) and a nearest-neighbour distance by a 2-D bank at detector level."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 1),
                                  nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.register_buffer("bank", torch.rand(16, 8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map = distance of each feature vector to its nearest bank row (matmul form), score = its max."""
        f = self.body(x).flatten(2).transpose(1, 2)  # (B, P, 8)
        d2 = (torch.matmul(f, -2.0 * self.bank.t()) + (self.bank**2).sum(1)).amin(-1) + (f * f).sum(-1)
        amap = d2.clamp_min(0).sqrt().reshape(x.shape[0], 1, x.shape[2] // 2, x.shape[3] // 2)
        amap = nn.functional.interpolate(amap, scale_factor=2.0, mode="nearest")
        return amap.amax(dim=(1, 2, 3)), amap


def test_sequential_layers_and_a_linear_map_are_units(images, tmp_path):
    """A Sequential splits into Conv+ReLU(+pool) layers; the bank MatMul is a unit whose output stays float."""
    assert block_of("/detector/teacher/body/body.3/Conv") == "/detector/teacher/body/body.3"
    assert block_of("/detector/ae/decoder.0/decoder.0.1/Relu") == "/detector/ae/decoder.0/decoder.0.1"
    rng = np.random.default_rng(0)
    bundle, _ = export_bundle(_BankDetector(), tiny_meta(), tmp_path / "bundle",
                              images=np.stack([good_image(rng) for _ in range(4)]))
    prepared = tmp_path / "prepared.onnx"
    prepare(bundle.onnx_path, prepared)
    blocks, skipped = learned_blocks(onnx.load(str(prepared)))
    assert {b: [n.rsplit("/", 1)[1] for n in nodes] for b, nodes in blocks.items()} == {
        "/detector/body/body.3": ["Conv", "Relu"], "/detector/body/body.5": ["Conv"], "/detector/MatMul": ["MatMul"]}
    assert list(skipped) == ["/detector/body/body.0"]  # the image-reading conv, its ReLU and pool: one layer, FP32
    out = tmp_path / "int8.onnx"
    quantise_blocks(prepared, out, images, CPU, [n for nodes in blocks.values() for n in nodes], tmp_path / "c.json")
    graph = onnx.load(str(out)).graph
    matmul = next(n for n in graph.node if n.name == "/detector/MatMul")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == matmul.output[0] for n in graph.node)
    assert fp32_ops(out, [n for nodes in blocks.values() for n in nodes]) == []  # MatMulIntegerToFloat, QLinearConv
    assert output_error(run_model(prepared, images), run_model(out, images)) < 0.05

