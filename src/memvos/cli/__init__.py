"""The ``memvos`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from memvos.errors import MemvosError

# Sub-command modules; each defines ``register(subparsers)`` which adds its parser and sets ``func``.
_COMMANDS = ["segment", "eval_cmd", "run_dataset", "train_cmd", "bench", "ui"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memvos", description=__doc__)
    from memvos import __version__

    parser.add_argument("--version", action="version", version=f"memvos {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"memvos.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"memvos.cli.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    from memvos.allocator import describe

    logging.getLogger(__name__).debug("allocator: %s", describe())
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except MemvosError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception text holds
        print(f"memvos {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memvos {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``memvos`` console command: set up the allocator (see :mod:`memvos.allocator`), then run."""
    from memvos.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
