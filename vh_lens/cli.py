"""The ``vh-lens`` command line: ``vh-lens scan | mask | lens | probe | patch | demo-data ...``.

Also ``python -m vh_lens ...``; ``vh-lens --version`` prints the package's version.

Each subcommand lives in ``vh_lens/commands/<name>.py`` with ``register(subparsers)`` adding its
parser and setting ``func`` to a function of the parsed arguments that returns an exit code.

Errors: every exception a command raises is printed as one line, ``vh-lens CMD: error: ...``,
and the exit code is 1; ``--debug`` (any subcommand) lets it propagate with its traceback. A
``KeyboardInterrupt`` is not caught here: ``vh-lens scan`` turns one during the scan into a
message and exit code 130 (the checkpoint stays for the rerun); elsewhere Python's default
applies (traceback, exit code 130).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

COMMANDS = ("scan", "mask", "lens", "probe", "patch", "demo-data")


def version() -> str:
    """The installed vh_lens version (the package metadata's), or ``"unknown"`` when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("vh_lens")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vh-lens",
        description="Visual and functional attention heads of LLaVA models (TransformerLens plugin).",
    )
    parser.add_argument("--version", action="version", version=f"vh-lens {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module_name = f"vh_lens.commands.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():
        command.add_argument(
            "--debug", action="store_true", help="on an error, show the full traceback instead of one line"
        )
    return parser


def _one_line(err: BaseException) -> str:
    """The error as one line: its message (lines joined with "; "), with its type unless a plain input error."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or repr(err)
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = f"missing key {err.args[0]!r}"
    plain = isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, PermissionError))
    return text if plain else f"{type(err).__name__}: {text}"


@contextlib.contextmanager
def _one_thread_for_the_toy(args: argparse.Namespace) -> Iterator[None]:
    """One torch thread while the command runs the toy model (``--model toy``, or ``patch`` without ``--model``).

    The toy is tiny: thread start-up costs more than it saves, and on a busy machine several
    threads make each forward pass many times slower (``vh-lens scan``'s demo does the same).
    """
    from vh_lens.toy import TOY_PATH

    model = getattr(args, "model", "absent")
    if model != Path(TOY_PATH) and not (args.command == "patch" and model is None):
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["scan", *argv]  # the main job: scan the bundled model (``vh-lens --out DIR`` too)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _one_thread_for_the_toy(args):
            return int(args.func(args) or 0)
    except Exception as err:  # every library error becomes one line (a KeyboardInterrupt is not caught)
        if getattr(args, "debug", False):
            raise
        print(f"vh-lens {args.command}: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
