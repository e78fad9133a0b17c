"""The bundle/graph contract: what every exported graph takes and returns, written down once.

The offline side (export, calibrate) produces graphs to this contract and the daemon's backends refuse anything
else, so both import it from here: uint8 NHWC image `image` in (colour order from bundle.json); `score` (B,) and
`anomaly_map` (B, 1, H, W) float32, normalised so the calibrated image threshold is `THRESHOLD`, and `mask`
(B, 1, H, W) uint8 {0, 1} out. The raw thresholds are graph initializers with fixed names, so calibration can
rewrite them without torch. numpy only: the daemon, export and calibration all import this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import numpy as np

INPUT_NAME = "image"
InputDtype = Literal["uint8"]
InputLayout = Literal["NHWC"]
INPUT_DTYPE: InputDtype = "uint8"
INPUT_LAYOUT: InputLayout = "NHWC"
CHANNELS: Final = 3
OPSET = 17  # ONNX opset of exported graphs
THRESHOLD = 1.0  # normalised image threshold: the graph maps the calibrated raw threshold here
# Thresholds.<field> -> ONNX initializer of the PostProcess buffer (the export wrapper holds PostProcess as `post`).
THRESHOLD_INITIALIZERS = {
    "offset": "post.offset",
    "image": "post.image_threshold",
    "pixel": "post.pixel_threshold",
}


class ModelOutputs(NamedTuple):
    """What every backend returns; the field names are the graph's output names, in output order."""

    score: np.ndarray  # (B,) float32, normalised: THRESHOLD = calibrated image threshold
    anomaly_map: np.ndarray  # (B, 1, H, W) float32, same scale
    mask: np.ndarray  # (B, 1, H, W) uint8 {0, 1}


OUTPUT_NAMES: tuple[str, ...] = ModelOutputs._fields
OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "score": np.dtype(np.float32),
    "anomaly_map": np.dtype(np.float32),
    "mask": np.dtype(np.uint8),
}


@dataclass(frozen=True)
class TensorContract:
    """One graph tensor as the contract fixes it: name, dtype and the shape of one image (the batch dim excluded)."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def describe(self) -> str:
        """`uint8 [batch, 256, 256, 3]`, as error messages show it."""
        return f"{self.dtype} [{', '.join(['batch', *map(str, self.shape)])}]"


def input_contract(height: int, width: int, name: str = INPUT_NAME) -> TensorContract:
    """The one input: uint8 NHWC images of the bundle's size (named as bundle.json's `input.name` says)."""
    return TensorContract(name, np.dtype(np.uint8), (height, width, CHANNELS))


def output_contracts(height: int, width: int) -> tuple[TensorContract, ...]:
    """The outputs, in `ModelOutputs` order."""
    shapes = {"score": (), "anomaly_map": (1, height, width), "mask": (1, height, width)}
    return tuple(TensorContract(name, OUTPUT_DTYPES[name], shapes[name]) for name in OUTPUT_NAMES)


# A found tensor: dtype (None when the caller cannot know it, a string for one numpy has no name for) and shape;
# a dim that is not a non-negative int (None, -1, "batch") is dynamic and matches any size.
FoundTensor = tuple[np.dtype[Any] | str | None, Sequence[int | str | None]]


def check_io(
    found: Mapping[str, FoundTensor],
    height: int,
    width: int,
    *,
    input_name: str = INPUT_NAME,
    outputs: bool = True,
    half_floats: bool = False,
) -> str | None:
    """What is wrong with a graph's tensors against the contract at `height` x `width`, or None when nothing is.

    Checks the input (and with `outputs`, every output): present, same dtype, same rank and every fixed dim equal
    (dim 0, the batch, may be anything). `half_floats` also accepts float16 where float32 is due (a TensorRT engine
    may return FP16 maps; the TensorRT backend widens them). Extra tensors are not the contract's business.
    """
    wanted = [input_contract(height, width, input_name), *(output_contracts(height, width) if outputs else ())]
    for want in wanted:
        if want.name not in found:
            return f"tensor {want.name!r} is missing (tensors: {sorted(found)})"
        dtype, shape = found[want.name]
        dims = list(shape)
        accepted = {want.dtype}
        if half_floats and want.dtype == np.float32:
            accepted.add(np.dtype(np.float16))
        ok_dtype = dtype is None or (isinstance(dtype, np.dtype) and dtype in accepted)
        fixed_ok = len(dims) == len(want.shape) + 1 and all(
            not isinstance(g, int) or g < 0 or g == w for g, w in zip(dims[1:], want.shape, strict=True)
        )
        if not ok_dtype or not fixed_ok:
            got = f"{'?' if dtype is None else dtype} {dims[1:]}"
            return f"tensor {want.name!r} is {got}, expected {want.describe()}"
    return None
