"""The exported graph: uint8 camera image in, normalised score / map / mask out, detector in the middle.

Everything the daemon would otherwise have to know about a model lives in the graph: the colour order, the cast to
float, the layout change, the detector's own post-processing, and the thresholds. The thresholds are buffers of
`PostProcess`, exported as initializers with fixed names (`THRESHOLD_INITIALIZERS`), so `inspectd calibrate` can
rewrite them in the ONNX file without torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from edge.contract import INPUT_NAME, OPSET, OUTPUT_NAMES, THRESHOLD_INITIALIZERS, output_contracts

if TYPE_CHECKING:
    import onnx


class PostProcess(nn.Module):
    """Raw detector outputs -> normalised score and map (image threshold = 1.0, offset = 0.0) and a uint8 mask.

    The thresholds are buffers so they travel in state dicts and become named ONNX initializers.
    """

    offset: torch.Tensor
    image_threshold: torch.Tensor
    pixel_threshold: torch.Tensor

    def __init__(self, offset: float, image_threshold: float, pixel_threshold: float) -> None:
        super().__init__()
        self.register_buffer("offset", torch.tensor(float(offset), dtype=torch.float32))
        self.register_buffer("image_threshold", torch.tensor(float(image_threshold), dtype=torch.float32))
        self.register_buffer("pixel_threshold", torch.tensor(float(pixel_threshold), dtype=torch.float32))

    def forward(
        self, score: torch.Tensor, anomaly_map: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalise with (raw - offset) / (image - offset); mask = map >= the pixel threshold on that scale."""
        return normalise(score, anomaly_map, self.offset, self.image_threshold, self.pixel_threshold)


def normalise(
    score: torch.Tensor, anomaly_map: torch.Tensor, offset: torch.Tensor, image: torch.Tensor, pixel: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PostProcess's arithmetic, with the thresholds as arguments (so export can pass them as graph inputs)."""
    scale = image - offset
    score_n = (score - offset) / scale
    map_n = (anomaly_map - offset) / scale
    # Where -> float -> Cast to uint8: TensorRT converts to UINT8 only from FLOAT/HALF (export/trt_rules.py); two
    # Casts bool -> float -> uint8 would be fused back into Cast(BOOL -> UINT8) by ONNX Runtime's optimiser, which
    # the INT8 Q/DQ graphs go through.
    mask = torch.where(map_n >= (pixel - offset) / scale, 1.0, 0.0).to(torch.uint8)
    return score_n, map_n, mask


class ExportWrapper(nn.Module):
    """uint8 NHWC image in `color_order` -> float RGB NCHW [0, 1] -> detector -> PostProcess."""

    def __init__(self, detector: nn.Module, post: PostProcess, color_order: str = "BGR") -> None:
        super().__init__()
        if color_order not in ("BGR", "RGB"):
            msg = f"color_order must be 'BGR' or 'RGB', found {color_order!r}"
            raise ValueError(msg)
        self.detector = detector
        self.post = post
        self.color_order = color_order

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (score (B,), anomaly_map (B,1,H,W), mask (B,1,H,W) uint8), normalised."""
        p = self.post
        return self.with_thresholds(image, p.offset, p.image_threshold, p.pixel_threshold)

    def with_thresholds(
        self, image: torch.Tensor, offset: torch.Tensor, image_threshold: torch.Tensor, pixel_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with the thresholds passed in rather than read from `post`."""
        # Cast first: TensorRT lets a UINT8 network input feed only a Cast, not a Transpose (export/trt_rules.py)
        x = image.to(torch.float32).permute(0, 3, 1, 2) / 255.0
        if self.color_order == "BGR":
            x = x[:, [2, 1, 0]]
        score, anomaly_map = self.detector(x)
        return normalise(score.reshape(-1), anomaly_map, offset, image_threshold, pixel_threshold)


class _ThresholdInputs(nn.Module):
    """Export view of the wrapper: thresholds are graph inputs, so no exporter pass can fold or merge them."""

    def __init__(self, wrapper: ExportWrapper) -> None:
        super().__init__()
        self.wrapper = wrapper

    def forward(
        self, image: torch.Tensor, offset: torch.Tensor, image_threshold: torch.Tensor, pixel_threshold: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See ExportWrapper.with_thresholds."""
        return self.wrapper.with_thresholds(image, offset, image_threshold, pixel_threshold)


def export_onnx(wrapper: ExportWrapper, path: Path, height: int, width: int, opset: int = OPSET) -> None:
    """Write `wrapper` as ONNX with a dynamic batch, a fixed H x W, and the thresholds as named initializers.

    The thresholds are exported as graph inputs and then turned into initializers named `THRESHOLD_INITIALIZERS`:
    exported as buffers, the exporter would fold `image - offset` into an anonymous constant or merge two equal
    thresholds into one, and calibration could no longer set them independently.
    """
    import onnx  # heavy; only the export path needs it
    from onnx import numpy_helper

    wrapper = wrapper.eval()
    post = wrapper.post
    values: dict[str, torch.Tensor] = {
        "offset": post.offset,
        "image": post.image_threshold,
        "pixel": post.pixel_threshold,
    }
    names = [THRESHOLD_INITIALIZERS[k] for k in values]
    example = (torch.zeros(2, height, width, 3, dtype=torch.uint8), *(v.detach().clone() for v in values.values()))
    batch = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but the dynamo one needs onnxscript, which we do not ship. Its
        # tracer warnings (shape-dependent Python branches) are checked for real by the parity run at batch 3 and 1.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _ThresholdInputs(wrapper).eval(),  # export restores this mode on every submodule afterwards
            example,
            str(path),
            input_names=[INPUT_NAME, *names],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch, **{name: batch for name in OUTPUT_NAMES}},
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(path))
    graph = model.graph
    kept = [i for i in graph.input if i.name not in names]
    missing = [n for n in names if n not in {i.name for i in graph.input}]
    if missing:  # a threshold that no node uses is dropped by the exporter: the detector graph is then unusable
        msg = f"exported graph lacks the threshold inputs {missing}; does the detector return (score, anomaly_map)?"
        raise RuntimeError(msg)
    del graph.input[:]
    graph.input.extend(kept)
    _declare_output_shapes(graph, wrapper, example[0])
    for key, name in zip(values, names, strict=False):
        graph.initializer.append(numpy_helper.from_array(values[key].detach().numpy().astype("float32"), name))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _declare_output_shapes(graph: onnx.GraphProto, wrapper: ExportWrapper, image: torch.Tensor) -> None:
    """Declare the outputs' real shapes, only the batch symbolic.

    The tracer leaves the map's H and W symbolic when the detector resizes to the input's size (it even names dim 2
    "batch"); TensorRT's rules (export/trt_rules.py) and the backends' I/O checks read these declarations. The
    shapes come from running the wrapper on the export example, so a detector whose map is not (B, 1, H, W) is
    refused here rather than at the first frame.
    """
    from onnx import helper

    with torch.no_grad():
        outputs = wrapper(image)
    h, w = image.shape[1:3]
    want = {c.name: c.shape for c in output_contracts(h, w)}
    declared = []
    for info, tensor in zip(graph.output, outputs, strict=True):
        tail = tuple(tensor.shape[1:])
        if tail != want[info.name] or tensor.shape[0] != image.shape[0]:
            msg = (f"the detector's {info.name} has shape {list(tensor.shape)} for a batch of {image.shape[0]} "
                   f"{h}x{w} images, expected {[image.shape[0], *want[info.name]]}")
            raise RuntimeError(msg)
        declared.append(helper.make_tensor_value_info(info.name, info.type.tensor_type.elem_type, ["batch", *tail]))
    del graph.output[:]
    graph.output.extend(declared)
