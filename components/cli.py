"""Shared command-line plumbing: config files, overrides, one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from components.config import Config, dump_yaml, load_config
from components.errors import InputError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config; several are merged in order (mappings merge, lists replace)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one dotted key, e.g. --set pretrain.max_steps=20")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace, fallback: Path | None = None) -> Config:
    files = args.config or ([fallback] if fallback is not None and fallback.is_file() else [])
    if not files:
        raise InputError("no config given: pass --config FILE (e.g. pipelines/configs/default.yaml)")
    return load_config(files, args.overrides)


def print_config(cfg: Config) -> None:
    sys.stdout.write(dump_yaml(cfg))


def run_main(main: Callable[[], int | None]) -> None:
    """Run `main`; a user error becomes one line on stderr and exit code 2 (no traceback)."""
    try:
        code = main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
