"""Argument types for the command line: each checks a range, so argparse refuses a bad value (exit 2, with usage)
before a command reads a file, touches a store or starts a cluster.

A refusal names the value and the allowed range; argparse adds the option's name (``argument --bins: ...``).
"""

from __future__ import annotations

import argparse
import math


def _integer(text: str) -> int:
    """``text`` as an int; integral float notation (``1e6``) and underscores (``1_000_000``) are accepted."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def integer(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``[lo, hi]`` (``hi`` None: no upper bound)."""
    allowed = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"

    def parse(text: str) -> int:
        try:
            value = _integer(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: {allowed}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {allowed}")
        return value

    parse.__name__ = allowed
    return parse


def number(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite number in the interval from ``lo`` to ``hi``, open at the ends flagged so."""
    if hi == math.inf:
        allowed = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: {allowed}") from None
        inside = (math.isfinite(value) and (value > lo if lo_open else value >= lo)
                  and (value < hi if hi_open else value <= hi))
        if not inside:
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {allowed}")
        return value

    parse.__name__ = allowed
    return parse


positive_int = integer(1)
non_negative_int = integer(0)
port = integer(0, 65535)
positive_seconds = number(0.0, lo_open=True)


def size(text: str) -> str:
    """An argparse type: a positive size in bytes (``4GB``, ``512MiB``, ``1e9``); returns ``text`` unchanged, so
    the scheduler code that reads it sees what the user typed."""
    from dask.utils import parse_bytes

    allowed = "a positive size such as 4GB, 512MiB or 1000000000 (bytes)"
    try:
        value = parse_bytes(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; allowed: {allowed}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; allowed: {allowed}")
    return text


size.__name__ = "size"


def storage_option(text: str) -> tuple:
    """An argparse type: ``KEY=VALUE``, one fsspec storage option; VALUE is parsed as JSON when it is JSON
    (``anon=true``, ``client_kwargs={"region_name": "eu-west-1"}``), else kept as a string."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE; e.g. endpoint_url=http://localhost:9000")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


storage_option.__name__ = "KEY=VALUE"


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for the store and output URLs of a command."""
    parser.add_argument("--storage-option", dest="storage_options", action="append", type=storage_option,
                        default=None, metavar="KEY=VALUE",
                        help="fsspec storage option for object storage URLs (store and outputs), repeatable; "
                             "VALUE is parsed as JSON when it is JSON (endpoint_url=http://host:9000, anon=true)")


def storage_options(args) -> dict | None:
    """The ``--storage-option`` values of ``args`` as a dict (None when none were given)."""
    pairs = getattr(args, "storage_options", None)
    return dict(pairs) if pairs else None


def add_where(parser: argparse.ArgumentParser) -> None:
    """``--where EXPR``: analyse only the records whose meta satisfies an expression (filtershift.store.query)."""
    parser.add_argument("--where", metavar="EXPR",
                        help="analyse only the records that satisfy EXPR, e.g. 'task == \"Classification\" and "
                             "conv_depth_norm <= 0.3': comparisons of coordinates and table columns (`Name "
                             "With-Dashes` in backticks) with \"labels\" or numbers, in [...], and/or/not, ()")



def add_scope(parser: argparse.ArgumentParser) -> None:
    """``--basis``, ``--range``: with ``--where``, whose PCA basis and coefficient range the selection is analysed
    in (:mod:`filtershift.stats.scope`)."""
    parser.add_argument("--basis", choices=("store", "selection"), default="store",
                        help="with --where: project on the PCA basis of the whole store (default, as the "
                             "CNN-Filter-DB notebook) or of the selected filters alone")
    parser.add_argument("--range", choices=("store", "selection"), default=None,
                        help="with --where: bin over the coefficient range of the whole store or of the selected "
                             "filters (default: that of --basis)")


def scope_note(scope, selected: bool) -> str:
    """One line saying whose basis and range an output used."""
    whose = {"store": "the whole store's", "selection": "the selection's", "given": "given"}
    lo, hi = scope.range
    basis, rng = whose[scope.basis_scope], whose[scope.range_scope]
    head = f"basis and range: {basis}" if basis == rng else f"basis: {basis}; range: {rng}"
    note = f"{head} (basis fitted on {scope.attrs()['basis_n_filters']:,} filters; range [{lo:.4g}, {hi:.4g}])"
    return note if selected else note + "; no --where, so the store is the selection"
