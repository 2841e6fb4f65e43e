"""The ``vh-lens`` command line: ``vh-lens scan | mask | lens | probe ...``.

Each subcommand lives in ``vh_lens/commands/<name>.py`` with ``register(subparsers)`` adding its
parser and setting ``func`` to a function of the parsed arguments that returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("scan", "mask", "lens", "probe", "patch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vh-lens",
        description="Visual and functional attention heads of LLaVA models (TransformerLens plugin).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vh_lens.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"vh_lens.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["scan", *argv]  # the main job: scan the bundled model (``vh-lens --out DIR`` too)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        print(f"vh-lens {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
