"""`opensd` command line: one module per command group, each with `register(sub)` adding its
parsers (`set_defaults(func=...)`). Modules import their heavy parts only when a command runs.
User mistakes end in one line and exit status 2."""
from __future__ import annotations

import argparse
import importlib
import logging

from ..errors import run_main

COMMAND_MODULES = ("generate", "info", "train", "serve", "control", "models", "upscale", "model_manager",
                   "batch", "workers", "tag")


class Parser(argparse.ArgumentParser):
    """argparse with its usage mistakes on one line, like every other error (usage stays in --help);
    subcommand parsers are made of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="opensd", description="Local, private Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(_run, argv)


def _run(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="opensd: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)
