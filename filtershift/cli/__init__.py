"""Command line: a thin shell over the Python API.

Every sub-command lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int`` (the exit code). Modules are discovered, so adding a command touches no
shared file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from filtershift._version import __version__
from filtershift.errors import FiltershiftError


def computing(parser: argparse.ArgumentParser, func) -> None:
    """Make ``func`` a sub-command that computes: add the scheduler options and run it inside the chosen
    scheduler (see :mod:`filtershift.cluster`)."""
    from filtershift.cluster import add_scheduler_arguments, context_from_args

    add_scheduler_arguments(parser)

    def run(args) -> int:
        with context_from_args(args):
            return func(args)

    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filtershift",
        description="Distribution shifts and quality of trained 3x3 convolution filters, out of core.",
    )
    parser.add_argument("--version", action="version", version=f"filtershift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FiltershiftError as exc:
        print(f"filtershift {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"filtershift {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":
            raise
        print(f"filtershift {args.command}: error: a dask worker died while computing ({exc}). Workers are "
              "restarted when they exceed their memory limit: give them more (--memory-limit, or fewer "
              "--workers), or convert the store with a smaller --chunk-filters.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
