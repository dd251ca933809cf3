"""The ``memvos`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from memvos.errors import MemvosError

# Sub-command modules; each defines ``register(subparsers)`` which adds its parser and sets ``func``.
_COMMANDS = ["segment", "eval_cmd", "run_dataset", "train_cmd", "bench", "ui", "export_cmd"]


#: Exit statuses of a run stopped by SIGINT (Ctrl-C) and SIGTERM (timeout, kill, job schedulers).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt, so that the same cleanup runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread; the previous
    handler is restored on exit. Outside the main thread (where handlers cannot be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except MemvosError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception text holds
        print(f"memvos {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"memvos {args.command}: terminated", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        print(f"memvos {args.command}: interrupted", file=sys.stderr)
        return EXIT_SIGINT


def entry() -> None:
    """The ``memvos`` console command: set up the allocator (see :mod:`memvos.allocator`), then run."""
    from memvos.allocator import reexec_with_fast_allocator

    reexec_with_fast_allocator()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
