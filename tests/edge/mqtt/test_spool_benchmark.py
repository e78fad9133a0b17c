"""Spool cost per verdict at 200 verdicts/s, per `spool_fsync` mode (a benchmark: `pytest -m benchmark -s`).

Per verdict: append (what the pipeline's publish stage pays), then read + acknowledge (the forwarder's share), paced
at 200 verdicts/s, modes interleaved over rounds so a noisy shared box hits them alike. Prints medians and 99th
percentiles; asserts nothing about speed. The README's spool table compares these with the segment-file spool of
earlier versions (`edge/sinks/spool.py` at commit 7037875), run the same way.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest

from edge.mqtt.spool import Spool

VERDICT = (
    b'{"seq":123456,"frame_id":123456,"ts":1763900000.123456,"verdict":"fail","score":1.834512,"threshold":1.0,'
    b'"latency_ms":41.217,"model":{"name":"bottle","hash":"3f2a9c1b0d4e"},"source":"cam0","part_id":"A-000123",'
    b'"regions":[{"bbox":[212,80,46,31],"area_px":902,"max_score":3.1,"mean_score":1.7}],"error":null}'
)
RATE = 200.0


def _paced(spool: Spool, n: int) -> tuple[list[float], list[float], list[float]]:
    """(append s, read+ack s, thread CPU s) per verdict, for `n` verdicts at RATE."""
    append, forward, cpu = [], [], []
    due = time.monotonic()
    for i in range(n):
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        due += 1.0 / RATE
        c0, t0 = time.thread_time(), time.perf_counter()
        spool.append(i, VERDICT)
        t1 = time.perf_counter()
        spool.sync_if_due()
        record = spool.read_next()
        assert record is not None
        spool.ack(record.rid)
        append.append(t1 - t0)
        forward.append(time.perf_counter() - t1)
        cpu.append(time.thread_time() - c0)
    return append, forward, cpu


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1e6


@pytest.mark.benchmark
def test_spool_cost_per_verdict(tmp_path: Path) -> None:
    """Append / read+ack / CPU microseconds per verdict for always, batch and never."""
    modes = ("always", "batch", "never")
    acc: dict[str, tuple[list[float], list[float], list[float]]] = {m: ([], [], []) for m in modes}
    for round_ in range(3):
        for mode in modes:
            spool = Spool(tmp_path / f"{mode}-{round_}", 256_000_000, mode)  # type: ignore[arg-type]
            for into, values in zip(acc[mode], _paced(spool, 800), strict=True):
                into.extend(values)
            spool.close()
    print(f"\nspool at {RATE:g} verdicts/s, load average {os.getloadavg()}")
    for mode, (append, forward, cpu) in acc.items():
        print(f"  {mode:7} append median {_p(append, 0.5):8.1f} us p99 {_p(append, 0.99):8.1f} us | read+ack median "
              f"{_p(forward, 0.5):7.1f} us | CPU per verdict median {statistics.median(cpu) * 1e6:6.1f} us")
