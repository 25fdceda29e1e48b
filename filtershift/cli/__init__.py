"""Command line: a thin shell over the Python API.

Every sub-command lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func(args) -> int`` (the exit code). Modules are discovered, so adding a command touches no
shared file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from filtershift._version import __version__
from filtershift.errors import FiltershiftError

#: Exit status when stdout's reader has gone: 128 + SIGPIPE (13), what a shell reports for a Unix tool that the
#: signal ended (``yes | head -1`` with ``set -o pipefail``), so pipelines that check every stage still notice.
SIGPIPE_EXIT = 141


def computing(parser: argparse.ArgumentParser, func, *, check=None) -> None:
    """Make ``func`` a sub-command that computes: add the scheduler options and run it inside the chosen
    scheduler (see :mod:`filtershift.cluster`).

    Before the scheduler starts, ``check(args)`` (if given) may refuse the arguments with a FiltershiftError, and
    the command's ``store`` argument (if it has one) must open as a complete store: a mistake costs no cluster.
    ``func`` finds that store, opened once (its manifest read once), in ``args.dataset``."""
    from filtershift.cli._scheduler import add_scheduler_arguments, context_from_args

    add_scheduler_arguments(parser)

    def run(args) -> int:
        if check is not None:
            check(args)
        if getattr(args, "store", None):
            args.dataset = open_checked(args)
        with context_from_args(args):
            return func(args)

    parser.set_defaults(func=run)


def open_checked(args):
    """The command's ``store`` opened as a lazy Dataset with every check of ``open_store`` (manifest, arrays,
    tables) and its ``--storage-option`` values, narrowed to ``--where`` if given. No chunk is read, so this runs
    before a scheduler starts."""
    from filtershift.cli._args import storage_options
    from filtershift.store.dataset import open_store, query

    ds = open_store(args.store, storage_options=storage_options(args))
    return query(ds, args.where) if getattr(args, "where", None) else ds


def _command_modules() -> list[str]:
    """The names of this package's command modules (``*.py`` not starting with ``_``), sorted. A directory listing,
    because pkgutil.iter_modules imports inspect (and dis, ast, tokenize) for nothing here: ``--help`` must be fast."""
    names = {entry.name[:-3] for folder in __path__ for entry in os.scandir(folder)
             if entry.name.endswith(".py") and not entry.name.startswith("_")}
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filtershift",
        description="Distribution shifts and quality of trained 3x3 convolution filters, out of core.",
    )
    parser.add_argument("--version", action="version", version=f"filtershift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _command_modules():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _stdout_closed() -> bool:
    """True when nobody reads stdout any more (the reader of its pipe or socket is gone)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; return the exit code (2 for arguments refused by the parser, after its
    usage message; 0 after --help or --version)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # The reader of stdout left (`filtershift pca db.zarr | head -3`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so the interpreter's last flush of what is still buffered does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
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
