"""`inspectd config check PATH`: validate a config and print the effective values, secrets masked."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.config import effective_toml, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`config check PATH`."""
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate PATH (with INSPECTD_* overrides) and print the effective config")
    check.add_argument("path", type=Path)


def run(args: argparse.Namespace) -> int:
    """Exit 0 and print the config when valid; ConfigError (exit 2) otherwise."""
    config = load_config(args.path, base_dir=args.path.resolve().parent)
    print(f"# {args.path}: valid\n")
    print(effective_toml(config))
    return 0
