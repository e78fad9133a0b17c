"""`inspectd` command line: one subcommand per module, imported only when that subcommand runs.

Each command module provides `add_arguments(parser)` and `run(args) -> int`, and must not import torch at module
level (so `inspectd --help` and the daemon work on a box without the train extra).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from edge import __version__
from edge.errors import InspectdError, MissingExtraError

# name -> (module, one-line help). Offline commands live beside their code and need the `train` extra.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.daemon", "run the inspection daemon"),
    "view": ("edge.tools.viewer", "show the debug stream of a running daemon"),
    "demo": ("edge.tools.demo", "build a sample, train, export, calibrate and run the daemon end to end"),
    "bench": ("edge.tools.bench", "measure backend, daemon and naive-loop throughput on one bundle"),
    "check": ("edge.tools.check", "self-test a newly installed box (backends, camera, broker)"),
    "config": ("edge.tools.config_cli", "validate a config file and print the effective config"),
    "dataset": ("detectors.dataset_build", "build benchmark categories from packaged real images"),
    "train": ("detectors.train", "train a detector on good images"),
    "teacher": ("detectors.efficientad.teacher", "distil the EfficientAD teacher on generic images (cached)"),
    "evaluate": ("detectors.evaluate", "evaluate a checkpoint on a test set"),
    "benchmark-detectors": ("detectors.benchmark", "train and evaluate every detector on every category"),
    "export": ("export.cli", "export a checkpoint to a model bundle (ONNX, TensorRT engine)"),
    "calibrate": ("calib.cli", "set thresholds from good images and make INT8 models"),
}


def _load(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "torchvision", "onnx", "tqdm", "skimage"}:
            msg = f"this command needs the train extra ({exc.name} is missing): pip install 'inspectd[train]'"
            raise MissingExtraError(msg) from exc
        raise


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Parser with every command listed; only the chosen command's module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="inspectd", description="Edge inspection daemon for factory lines.")
    parser.add_argument("--version", action="version", version=f"inspectd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = _load(module)
            mod.add_arguments(p)  # type: ignore[attr-defined]
            p.set_defaults(_module=mod)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `inspectd` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # torch's OpenMP threads spin while they wait (libgomp's default): on a box shared with other work (a line PC,
    # CI, 8 jobs on 2 cores) a 2-thread training step then ran 10x slower in wall time (ssim_ae, measured: 3.0 vs
    # 0.29 s per step at load 16). PASSIVE makes them sleep. Read when torch loads, so set before any command runs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._module.run(args) or 0)
    except InspectdError as exc:
        print(f"inspectd {argv[0] if argv else ''}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
