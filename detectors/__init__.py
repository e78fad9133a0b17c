"""Detectors: torch models that learn what a good part looks like from good images only. Needs the train extra.

Contract every detector keeps (so export/ and calib/ never special-case one):
- `detectors/<name>/model.py`: a plain `nn.Module` built from a params dict. `forward(x)` takes float32 RGB NCHW in
  [0, 1] at the bundle's input size (the module applies its own normalisation, kept as buffers) and in eval mode
  returns `(score (B,), anomaly_map (B, 1, H, W))`, raw (un-normalised, higher = more anomalous), at input size.
  It must export to ONNX (opset 17) with a dynamic batch dimension.
- `detectors/<name>/train.py`: `fit(...)` that trains on good images only.
- Registered in `DETECTORS` below: name -> package.
"""

DETECTORS: dict[str, str] = {
    "ssim_ae": "detectors.ssim_ae",
    "padim": "detectors.padim",
    "draem": "detectors.draem",
}
