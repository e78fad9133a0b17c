"""`model.precision = "auto"`: FP32 or INT8, decided by timing both on the box that runs them, once per CPU and bundle.

INT8's speed is a property of the CPU, not of the bundle: integer kernels are fast with VNNI/AMX and can be slower
than FP32 on a CPU without them, and the daemon rarely runs on the workstation that calibrated. So at start-up the
backend times both graphs here (a few warm runs each, interleaved, within `BUDGET_S`) and keeps the faster; INT8
must win by `MARGIN` to be chosen, since both passed the accuracy gate and FP32 is the reference. The decision is
cached in `<model.state_dir>/precision.json` under a key of the CPU model, its ISA flags, the ONNX Runtime version,
the thread count and both graphs' SHA-256: a restart reuses it, a new CPU, bundle, runtime or thread count re-measures.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge.errors import BundleError
from edge.log import get_logger

log = get_logger(__name__)

BUDGET_S = 4.0  # measuring stops after this much time (plus one pair in flight)
MIN_PAIRS, MAX_PAIRS, WARMUP = 3, 15, 2
MARGIN = 0.95  # INT8 is chosen when int8_ms < MARGIN x fp32_ms
CACHE_FILE = "precision.json"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimddp", "i8mm")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

Run = Callable[[], object]


@dataclass(frozen=True)
class Decision:
    """Which graph runs and why; the timings are ms per call of `model.max_batch` images on this box."""

    precision: Literal["fp32", "int8"]
    file: str
    reason: str
    source: Literal["forced", "measured", "cached", "no-int8"]
    fp32_ms: float | None = None
    int8_ms: float | None = None


def cpu_identity() -> dict[str, Any]:
    """CPU model name and the ISA flags that decide integer-kernel speed (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
            if key == "" and flags:  # end of the first processor block
                break
    return {"model": model, "machine": platform.machine(), "isa": sorted(flags & set(ISA_FLAGS))}


def has_vnni(cpu: dict[str, Any]) -> bool:
    """True where U8S8 integer products cannot saturate (x86 VNNI/AMX), or on non-x86 CPUs."""
    return cpu["machine"] not in ("x86_64", "AMD64", "i686") or any(f in cpu["isa"] for f in VNNI_FLAGS)


def cache_key(cpu: dict[str, Any], runtime: str, threads: int, batch: int, hashes: tuple[str, str]) -> str:
    """Digest of everything a timing depends on."""
    blob = json.dumps({"cpu": cpu, "runtime": runtime, "threads": threads, "batch": batch, "models": hashes},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def paired_ms(fp32: Run, int8: Run, budget_s: float = BUDGET_S) -> tuple[float, float]:
    """Median ms per call of two runs, interleaved so both see the same load; stops at MAX_PAIRS or the budget."""
    for _ in range(WARMUP):
        fp32()
        int8()
    times: tuple[list[float], list[float]] = ([], [])
    deadline = time.monotonic() + budget_s
    while len(times[0]) < MAX_PAIRS and (len(times[0]) < MIN_PAIRS or time.monotonic() < deadline):
        for run, out in ((fp32, times[0]), (int8, times[1])):
            t0 = time.perf_counter()
            run()
            out.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times[0])), float(np.median(times[1]))


def read_cache(path: Path) -> dict[str, Any]:
    """The cache file's entries; an unreadable file counts as empty (it is only an optimisation)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add `entry` under `key`, atomically (write + rename); a failure is logged, never fatal."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_cache(path)
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("precision_cache_unwritable", path=str(path), error=str(exc))


def decide(
    precision: str,
    fp32_file: str,
    int8_file: str | None,
    *,
    bundle: str,
    hashes: tuple[str, str] | None,
    cache: Path,
    runtime: str,
    threads: int,
    batch: int,
    measure: Callable[[], tuple[float, float]],
) -> Decision:
    """The graph to run for `model.precision`; `measure()` times (FP32, INT8) and is called only on a cache miss.

    Raises:
        BundleError: `precision = "int8"` and the bundle has no INT8 CPU flavour.
    """
    if int8_file is None:
        if precision == "int8":
            msg = f"model.precision = 'int8' but bundle {bundle} has no INT8 CPU flavour; run `inspectd calibrate`"
            raise BundleError(msg)
        why = "forced by model.precision = 'fp32'" if precision == "fp32" else "auto: the bundle has no INT8 flavour"
        return Decision("fp32", fp32_file, why, "forced" if precision == "fp32" else "no-int8")
    if precision != "auto":
        file = int8_file if precision == "int8" else fp32_file
        return Decision(precision, file, f"forced by model.precision = {precision!r}", "forced")  # type: ignore[arg-type]
    if hashes is None:  # the bundle lists both files whenever it has an INT8 flavour
        msg = f"bundle {bundle}: model.precision = 'auto' needs the SHA-256 of {fp32_file} and {int8_file}"
        raise BundleError(msg)
    cpu = cpu_identity()
    key = cache_key(cpu, runtime, threads, batch, hashes)
    entry = read_cache(cache).get(key)
    source: Literal["measured", "cached"] = "cached"
    if not (isinstance(entry, dict) and {"fp32_ms", "int8_ms"} <= entry.keys()):
        fp32_ms, int8_ms = measure()
        entry = {"fp32_ms": round(fp32_ms, 3), "int8_ms": round(int8_ms, 3), "cpu": cpu["model"], "isa": cpu["isa"],
                 "runtime": runtime, "threads": threads, "batch": batch, "bundle": bundle, "models": list(hashes),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_cache(cache, key, entry)
        source = "measured"
    fp32_ms, int8_ms = float(entry["fp32_ms"]), float(entry["int8_ms"])
    faster = int8_ms < MARGIN * fp32_ms
    verb = "measured" if source == "measured" else f"measured {entry.get('measured', 'earlier')}, cached"
    reason = (f"auto: INT8 {int8_ms:.2f} ms vs FP32 {fp32_ms:.2f} ms on {cpu['model']} ({verb}); "
              f"{'INT8' if faster else 'FP32'}: INT8 runs only when at least {100 * (1 - MARGIN):.0f}% faster")
    return Decision("int8" if faster else "fp32", int8_file if faster else fp32_file, reason, source,
                    fp32_ms, int8_ms)


def as_log(decision: Decision) -> dict[str, Any]:
    """The decision as log-line fields."""
    return {k: v for k, v in asdict(decision).items() if v is not None}
