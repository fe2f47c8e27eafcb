"""`opensd` command line: one module per command group, each with `register(sub)` adding its
parsers (`set_defaults(func=...)`). Modules import their heavy parts only when a command runs.
User mistakes end in one line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import OpenSDError

EXIT_USAGE = 2
COMMAND_MODULES = ("generate", "info", "train", "serve", "control", "models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensd", description="Local, private Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="opensd: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OpenSDError as e:
        print(f"opensd: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("opensd: interrupted", file=sys.stderr)
        return 130
