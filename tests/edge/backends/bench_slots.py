"""Benchmark (not a test): GPU-path throughput of the real Pipeline on the ring seam with simulated stage times.

    python -m tests.edge.backends.bench_slots [--frames 300] [--repeats 5] [--profiles 5/5/5 3/8/3 5/5/8]
    pytest -m benchmark -s tests/edge/backends/test_slot_benchmark.py

Each profile is preprocess/GPU/postprocess milliseconds per batch (batch 1). The pipeline, the ring and
RingBackend are the real ones; the executor is a one-queue "GPU" thread that takes the GPU time per batch and
computes the tiny bundle's rule; preprocess and postprocess run for real and then sleep up to their budget. The
stage costs are sleeps, so the numbers hardly depend on the box's load: they measure how the slot ring schedules
work. It prints batches/s per profile and slot count (median of `repeats`, paired: slot counts interleaved), and
the bound the slowest stage sets. Run it from another tree (`cd /work/main && python -m ...` with this file copied,
or an older commit) to compare release policies; it imports only `edge`.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import edge.pipeline
from edge.backends.ring import RingBackend
from edge.config import Config
from edge.pipeline import Pipeline
from edge.sources import open_source
from edge.stats import PipelineStats

H = W = 16


class SimulatedGpu:
    """The Executor seam: one worker thread (one GPU queue) taking `gpu_s` per batch, in submission order."""

    def __init__(self, slots: int, gpu_s: float) -> None:
        self.gpu_s = gpu_s
        self.inputs = [np.zeros((1, H, W, 3), np.uint8) for _ in range(slots)]
        self.outputs = [{"score": np.zeros(1, np.float32), "anomaly_map": np.zeros((1, 1, H, W), np.float32),
                         "mask": np.zeros((1, 1, H, W), np.uint8)} for _ in range(slots)]
        self.done = [threading.Event() for _ in range(slots)]
        self.work: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.work.get()) is not None:
            slot, n = item
            time.sleep(self.gpu_s)
            amap = self.inputs[slot][:n].astype(np.float32).mean(axis=-1)[:, None] / 255.0 / 0.5
            out = self.outputs[slot]
            out["anomaly_map"][:n], out["score"][:n] = amap, amap.max(axis=(1, 2, 3))
            out["mask"][:n] = amap >= 1.0
            self.done[slot].set()

    def input_buffer(self, slot: int) -> np.ndarray:
        return self.inputs[slot]

    def output_buffers(self, slot: int) -> dict[str, np.ndarray]:
        return self.outputs[slot]

    def enqueue(self, slot: int, n: int) -> None:
        self.done[slot].clear()
        self.work.put((slot, n))

    def synchronize(self, slot: int) -> None:
        self.done[slot].wait()

    def close(self, free: bool = True) -> None:
        self.work.put(None)


def padded(fn: Any, budget_s: float) -> Any:
    """`fn`, then sleep for whatever is left of `budget_s`: a stage that costs `budget_s` per call."""
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        left = budget_s - (time.perf_counter() - t0)
        if left > 0:
            time.sleep(left)
        return result
    return run


def measure(folder: Path, frames: int, slots: int, pre_ms: float, gpu_ms: float, post_ms: float) -> float:
    """Batches per second in steady state (first and last 10% of verdicts left out)."""
    config = Config()
    config.source.kind, config.source.uri = "folder", str(folder)
    stats = PipelineStats()
    executor = SimulatedGpu(slots, gpu_ms / 1000)
    backend = RingBackend(executor, name="simulated", max_batch=1, input_shape=(H, W, 3), slots=slots)
    stamps: list[float] = []
    real_pre, real_regions = edge.pipeline.preprocess, edge.pipeline.find_regions
    edge.pipeline.preprocess = padded(real_pre, pre_ms / 1000)  # type: ignore[assignment]
    edge.pipeline.find_regions = padded(real_regions, post_ms / 1000)  # type: ignore[assignment]
    try:
        pipeline = Pipeline(open_source(config.source, stats=stats), backend, [], config=config,
                            model={"name": "bench", "hash": "0" * 12}, color_order="BGR", stats=stats,
                            on_verdict=lambda _i: stamps.append(time.perf_counter()))
        pipeline.run(drain_timeout=120)
    finally:
        edge.pipeline.preprocess, edge.pipeline.find_regions = real_pre, real_regions  # type: ignore[assignment]
        backend.close()
    if len(stamps) != frames:
        msg = f"{len(stamps)} verdicts for {frames} frames"
        raise RuntimeError(msg)
    cut = frames // 10
    return (frames - 2 * cut - 1) / (stamps[-cut - 1] - stamps[cut])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slots", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--profiles", nargs="+", default=["5/5/5", "3/8/3", "5/5/8", "8/5/5"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(args.frames):
            cv2.imwrite(str(folder / f"{i:04d}.png"), np.full((H, W, 3), (i * 7) % 256, np.uint8))
        for profile in args.profiles:
            pre, gpu, post = (float(v) for v in profile.split("/"))
            runs: dict[int, list[float]] = {s: [] for s in args.slots}
            for _ in range(args.repeats):
                for slots in args.slots:
                    runs[slots].append(measure(folder, args.frames, slots, pre, gpu, post))
            bound = 1000 / max(pre, gpu, post)
            cells = ", ".join(f"{s} slots {statistics.median(v):6.1f}/s" for s, v in runs.items())
            print(f"pre/gpu/post {profile} ms: {cells}  (slowest stage bounds {bound:.0f}/s)", flush=True)


if __name__ == "__main__":
    main()
