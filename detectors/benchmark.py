"""`inspectd benchmark-detectors`: train and evaluate every detector on every built category, one Markdown table.

Each (detector, category) run trains with a wall-clock budget of `--minutes` (PaDiM needs one pass and stops
earlier), then evaluates on the category's test set. Checkpoints, metric JSONs and heatmap grids go to `--work`;
the table is rewritten after every run, so an interrupted benchmark still leaves the rows it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from detectors import registry


def find_categories(data: Path) -> list[Path]:
    """Category folders under `data` (those with train/good), sorted with elpv_poly last."""
    cats = sorted(p for p in data.iterdir() if (p / "train" / "good").is_dir())
    return sorted(cats, key=lambda p: (p.name.startswith("elpv"), p.name))


def cpu_description() -> str:
    """`lscpu`'s model name and whether AVX-512 VNNI / AMX are there (INT8 and matmul speed depend on them)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    isa = [name for name, flag in (("AVX-512 VNNI", "avx512_vnni"), ("AMX", "amx_int8")) if flag in flags]
    return f"{model} ({', '.join(isa) or 'no AVX-512 VNNI / AMX'}), {os.cpu_count()} logical CPUs"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def render_table(rows: list[dict], header: str) -> str:
    """Markdown: one row per (detector, category), then means over the texture categories (those with masks)."""
    lines = [
        header,
        "",
        "| detector | category | image AUROC | pixel AUROC | AUPRO | image AUROC (subtle) | train min | train steps "
        "| ms/image ORT 2 thr | ms/image torch | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['category']} | error: {r['error']} | | | | | | | | |")
            continue
        lines.append(
            f"| {r['detector']} | {r['category']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
            f"{_fmt(r['aupro'])} | {_fmt(r.get('image_auroc_subtle'))} | {r['train_minutes']:.2f} | "
            f"{r.get('train_steps', '')} | {r.get('ort_ms_per_image', float('nan')):.1f} | {r['ms_per_image']:.0f} | "
            f"{(r.get('load_average') or ['?'])[0]} |"
        )
    lines += [
        "",
        "| detector | textures | mean image AUROC | mean pixel AUROC | mean AUPRO | mean image AUROC (subtle) |",
        "|---|---|---|---|---|---|",
    ]
    for det in dict.fromkeys(r["detector"] for r in rows):
        tex = [r for r in rows if r["detector"] == det and "error" not in r and r["pixel_auroc"] is not None]
        if not tex:
            continue
        mean = {
            k: float(np.mean([r[k] for r in tex if r.get(k) is not None]))
            for k in ("image_auroc", "pixel_auroc", "aupro", "image_auroc_subtle")
            if any(r.get(k) is not None for r in tex)
        }
        lines.append(
            f"| {det} | {len(tex)} | {_fmt(mean.get('image_auroc'))} | {_fmt(mean.get('pixel_auroc'))} | "
            f"{_fmt(mean.get('aupro'))} | {_fmt(mean.get('image_auroc_subtle'))} |"
        )
    typed = [r for r in rows if "distortion" in (r.get("image_auroc_per_type") or {})]
    if typed:
        lines += [
            "",
            "| detector | category | image AUROC | distortion | other defect types (mean of per-type AUROC) |",
            "|---|---|---|---|---|",
        ]
        for r in typed:
            per = r["image_auroc_per_type"]
            others = [v for k, v in per.items() if k != "distortion"]
            lines.append(
                f"| {r['detector']} | {r['category']} | {_fmt(r['image_auroc'])} | {_fmt(per['distortion'])} | "
                f"{_fmt(float(np.mean(others)) if others else None)} |"
            )
    return "\n".join(lines) + "\n"


def benchmark(
    data: Path,
    *,
    minutes: float,
    out: Path,
    work: Path,
    detectors: list[str],
    categories: list[str] | None,
    size: int = 256,
    seed: int = 0,
    command: str = "",
    params: dict[str, dict] | None = None,
    append: bool = False,
    bank_sizes: list[int] | None = None,
    variants: list[str] | None = None,
) -> list[dict]:
    """Run every detector on every category; returns the result rows (also written to `out` and `out`.json).

    `params` maps detector -> parameter overrides. With `append`, rows already in `out`.json for other
    (detector, category) pairs are kept, so detectors can be benchmarked in separate sessions into one table.
    `bank_sizes` adds rows `patchcore[M]`: one fit with a bank of max(M) rows, evaluated with its first M rows
    each. The greedy k-center order makes the first M rows exactly the coreset a fit with max_bank=M would keep.
    `variants` adds rows named `DETECTOR[KEY=VALUE,...]`, each a run of DETECTOR with those params over `params`
    (e.g. `metric[classes=2]` beside `metric[classes=3]`).
    """
    import torch

    from detectors.evaluate import evaluate_checkpoint
    from detectors.train import TrainResult, train_detector

    cats = [c for c in find_categories(data) if categories is None or c.name in categories]
    pretrained = [*detectors, *(["patchcore"] if bank_sizes and "patchcore" not in detectors else [])]
    header = (
        f"Produced by `{command or 'inspectd benchmark-detectors'}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{cpu_description()}, load average at start {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"{size}x{size} input, training budget {minutes:g} min per run, seed {seed}. "
        f"Pretrained weights: {', '.join(d for d in pretrained if registry.get(d).pretrained) or 'none'}."
    )
    rows: list[dict] = []
    previous = out.with_suffix(".json")
    runs = [(d, None) for d in detectors] + [("patchcore", m) for m in sorted(bank_sizes or [], reverse=True)]
    names = [d if m is None else f"patchcore[{m}]" for d, m in runs]
    variant_params: dict[str, dict] = {}
    for text in variants or []:
        det, extra = parse_variant(text)
        runs.append((det, None))
        names.append(text)
        variant_params[text] = extra
    if append and previous.is_file():
        rerun = {(d, c.name) for d in names for c in cats}
        rows = [r for r in json.loads(previous.read_text()) if (r["detector"], r["category"]) not in rerun]
    for cat in cats:
        for (det, bank), name in zip(runs, names, strict=True):
            ckpt = work / cat.name / f"{name}.pt"
            print(f"== {name} on {cat.name}", flush=True)
            start = time.monotonic()
            try:
                if bank is None or bank == max(bank_sizes or [0]):
                    fit_params = {**((params or {}).get(det) or {}), **variant_params.get(name, {})}
                    if bank is not None:
                        fit_params.update(coreset=1.0, max_bank=bank)
                    result = train_detector(
                        det, cat, ckpt, size=size, seed=seed, max_minutes=minutes, progress=False, params=fit_params
                    )
                    if bank is not None:
                        largest, largest_log = ckpt, result.log
                else:
                    truncate_bank(largest, ckpt, bank)
                metrics = evaluate_checkpoint(
                    ckpt, cat, json_path=work / cat.name / f"{name}.json", grid=work / cat.name / f"{name}_grid.png"
                )
                metrics["detector"] = name
                if bank is not None:
                    result = TrainResult(ckpt, largest_log, {}, 0)
                row = {
                    **metrics,
                    "train_minutes": float(result.log.get("minutes", 0.0)),
                    "train_steps": int(result.log.get("steps", 0)),
                }
            except Exception as exc:  # noqa: BLE001 (one failed run must not lose the others)
                traceback.print_exc()
                row = {"detector": name, "category": cat.name, "error": f"{type(exc).__name__}: {exc}"[:200]}
            row["wall_minutes"] = (time.monotonic() - start) / 60
            rows.append(row)
            rows.sort(key=lambda r: (r["detector"], r["category"].startswith("elpv"), r["category"]))
            keys = ("image_auroc", "pixel_auroc", "aupro", "train_minutes", "error")
            print({k: row.get(k) for k in keys}, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render_table(rows, header))
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def paired_latency(checkpoints: list[Path], runs: int) -> str:
    """ORT ms/image of the checkpoints' detector graphs, interleaved (one image each per round), and ratios."""
    from detectors.checkpoint import load
    from detectors.evaluate import ORT_THREADS, paired_ort_latency_ms

    models, sizes = {}, set()
    for path in checkpoints:
        model, meta = load(path)
        models[f"{meta.detector} ({path})"] = model
        sizes.add((int(meta.input_size[0]), int(meta.input_size[1])))
    if len(sizes) != 1:
        msg = f"--paired-latency needs checkpoints of one input size, found {sorted(sizes)}"
        raise registry.DetectorError(msg)
    load_before = os.getloadavg()[0]
    medians = paired_ort_latency_ms(models, sizes.pop(), runs=runs)
    first = next(iter(medians.values()))
    lines = [
        f"ONNX Runtime, {ORT_THREADS} threads, batch 1, {runs} interleaved rounds, medians; {cpu_description()}; "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        "| model | ms/image | ratio to the first |",
        "|---|---|---|",
        *(f"| {name} | {ms:.2f} | {ms / first:.2f} |" for name, ms in medians.items()),
    ]
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    """`DETECTOR[KEY=VALUE,...]` -> (detector, checked params); the text is also the row's name."""
    det, sep, rest = text.partition("[")
    if not sep or not rest.endswith("]"):
        msg = f"--variants {text!r}: expected DETECTOR[KEY=VALUE,...], e.g. metric[classes=2]"
        raise registry.DetectorError(msg)
    items = [item for item in rest[:-1].split(",") if item]
    return det, registry.parse_assignments(registry.get(det), items)


def truncate_bank(src: Path, dst: Path, rows: int) -> None:
    """Copy a patchcore checkpoint keeping the first `rows` bank rows (its greedy k-center order)."""
    from detectors.checkpoint import load, save
    from detectors.patchcore import PatchCore

    model, meta = load(src)
    if not isinstance(model, PatchCore):
        msg = f"{src} is a {meta.detector} checkpoint, not patchcore"
        raise TypeError(msg)
    model.set_bank(model.bank[:rows])
    meta.params = {**meta.params, "max_bank": rows}
    save(dst, model, meta)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark options."""
    parser.add_argument("--data", type=Path, help="folder of built categories (inspectd dataset build); required")
    parser.add_argument(
        "--paired-latency",
        nargs="+",
        type=Path,
        metavar="CKPT",
        help="only time these checkpoints' graphs in ONNX Runtime, interleaved, with ratios to the first",
    )
    parser.add_argument("--rounds", type=int, default=50, help="interleaved rounds for --paired-latency")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per (detector, category) run")
    parser.add_argument("--out", type=Path, default=Path("var/bench/detectors.md"), help="Markdown table to write")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("var/bench/detectors"),
        help="checkpoints, metric JSONs and heatmap grids go here",
    )
    parser.add_argument(
        "--detectors",
        nargs="+",
        default=None,
        choices=registry.names(),
        metavar="NAME",
        help="default: every registered detector (none when --variants is given)",
    )
    parser.add_argument("--categories", nargs="+", default=None, metavar="NAME", help="default: every category found")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="DETECTOR:KEY=VALUE",
        help="override a detector parameter for every category (repeatable)",
    )
    parser.add_argument(
        "--bank-sizes",
        nargs="+",
        type=int,
        default=None,
        metavar="M",
        help="also rows patchcore[M]: one fit with max(M) bank rows, evaluated with its first M rows (trade-off)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="DETECTOR[KEY=VALUE,...]",
        help="also rows of a detector with other params, named as given, e.g. metric[classes=2] metric[classes=3]",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep rows of other detector/category pairs from an earlier run's <out>.json",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table (or, with --paired-latency, only time the checkpoints given)."""
    if args.paired_latency:
        print(paired_latency(args.paired_latency, args.rounds))
        return 0
    if args.data is None:
        msg = "inspectd benchmark-detectors: --data is required (only --paired-latency runs without it)"
        raise registry.DetectorError(msg)
    per_detector: dict[str, list[str]] = {}
    for item in args.param:
        det, sep, kv = item.partition(":")
        if not sep:
            msg = f"--param {item!r}: expected DETECTOR:KEY=VALUE with DETECTOR one of {', '.join(registry.names())}"
            raise registry.DetectorError(msg)
        per_detector.setdefault(det, []).append(kv)
    params = {d: registry.parse_assignments(registry.get(d), kvs) for d, kvs in per_detector.items()}
    cmd = " ".join(
        [
            "inspectd benchmark-detectors",
            f"--data {args.data}",
            f"--minutes {args.minutes:g}",
            *(f"--param {p}" for p in args.param),
            *([f"--bank-sizes {' '.join(map(str, args.bank_sizes))}"] if args.bank_sizes else []),
            *([f"--variants {' '.join(args.variants)}"] if args.variants else []),
        ]
    )
    rows = benchmark(
        args.data,
        minutes=args.minutes,
        out=args.out,
        work=args.work,
        detectors=list(args.detectors if args.detectors is not None else [] if args.variants else registry.names()),
        categories=args.categories,
        size=args.size,
        seed=args.seed,
        command=cmd,
        params=params,
        append=args.append,
        bank_sizes=args.bank_sizes,
        variants=args.variants,
    )
    print(args.out.read_text())
    return 1 if any("error" in r for r in rows) else 0
