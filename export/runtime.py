"""Run a bundle's ONNX graph on CPU with ONNX Runtime, in batches. No torch: calibration uses it too."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.contract import INPUT_NAME, OUTPUT_NAMES, ModelOutputs


def open_session(path: Path, threads: int = 2, *, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads, as the daemon's CPU backend runs it.

    `optimize=False` runs every node as written: a Q/DQ graph then computes QuantizeLinear -> DequantizeLinear ->
    FP32 Conv, the exact arithmetic of explicit quantisation, instead of ONNX Runtime's fused integer kernels (which on
    CPUs without VNNI may saturate int16 intermediates, something TensorRT does not do).
    """
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_model(
    model: Path | ort.InferenceSession, images: np.ndarray, *, batch: int = 8, threads: int = 2, optimize: bool = True
) -> ModelOutputs:
    """Outputs of the graph for uint8 (N, H, W, 3) images, concatenated over batches of `batch`."""
    session = model if isinstance(model, ort.InferenceSession) else open_session(model, threads, optimize=optimize)
    names = list(OUTPUT_NAMES)
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, len(images), batch):
        outputs = session.run(names, {INPUT_NAME: np.ascontiguousarray(images[start : start + batch])})
        for part, out in zip(parts, outputs, strict=False):
            part.append(out)
    return ModelOutputs(*(np.concatenate(p) for p in parts))


def paired_latency(
    a: Path, b: Path, image: np.ndarray, *, threads: int = 2, repeats: int = 15, warmup: int = 3
) -> tuple[float, float]:
    """Median ms per image of models `a` and `b` on one image, timed alternately so both see the same machine load."""
    sessions = [open_session(a, threads), open_session(b, threads)]
    feed = {INPUT_NAME: np.ascontiguousarray(image[None])}
    for _ in range(warmup):
        for s in sessions:
            s.run(None, feed)
    times: list[list[float]] = [[], []]
    for _ in range(repeats):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times[0])), float(np.median(times[1]))
