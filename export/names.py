"""Names fixed by the exported graph, importable without torch (calibration edits graphs by these names)."""

from __future__ import annotations

from edge.backends import ModelOutputs

OPSET = 17
OUTPUT_NAMES: tuple[str, ...] = ModelOutputs._fields
# Thresholds.<field> -> ONNX initializer of the PostProcess buffer (the wrapper holds PostProcess as `post`).
THRESHOLD_INITIALIZERS = {
    "offset": "post.offset",
    "image": "post.image_threshold",
    "pixel": "post.pixel_threshold",
}
