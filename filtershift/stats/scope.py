"""Which filters the basis and the coefficient range of an analysis come from: the whole store's or a selection's.

The CNN-Filter-DB notebook projects every subset on the basis of all filters and bins it over their coefficient
range, so that histograms of different subsets share one axis. filtershift does the same by default
(``basis="store"``, ``range="store"``); ``"selection"`` takes them from the selected filters alone. The store is
the whole Dataset a selection (``query``, ``sel``, ``isel``, ``select``) was taken from; its statistics are kept
with its tables (:func:`store_stats`), so every selection of one store shares one pass 1 and one pass 2 of the
store, and a selection of whole records takes its own passes 1 and 2 from the store's rows instead of reading
them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats.basis import default_basis, lazy_dataset
from filtershift.stats.cache import RecordStats, as_stats, record_index
from filtershift.store.dataset import is_whole, whole

#: The choices of ``basis=`` and ``range=`` (besides a fitted basis or two numbers).
SCOPES = ("store", "selection")
#: The default of both: the notebook's (one global basis and range for every subset).
DEFAULT = "store"


@dataclass
class Scope:
    """The statistics of the analysed filters, the basis and range to use, and where each came from."""

    stats: RecordStats
    basis: object
    range: tuple
    basis_scope: str
    range_scope: str

    def attrs(self) -> dict:
        """What an output says about its basis and range (``basis_scope``, ``range_scope``: ``"store"``,
        ``"selection"`` or ``"given"``; ``basis_n_filters``: the filters the basis was fitted on)."""
        n = getattr(self.basis, "n_samples_", None)
        return {"basis_scope": self.basis_scope, "range_scope": self.range_scope,
                "basis_n_filters": int(n) if n is not None else -1}


def store_stats(stats: RecordStats) -> RecordStats:
    """The statistics of the whole store that ``stats``' filters were selected from: ``stats`` itself for a whole
    Dataset (or one without a record index: nothing else is known), else the store's, kept with its tables and
    shared by every selection of it (created here on first use)."""
    if is_whole(stats.ds):
        return stats
    shared = record_index(stats.ds).tables.shared
    if "stats" not in shared:
        shared["stats"] = RecordStats(lazy_dataset(whole(stats.ds)), split_every=stats.split_every)
    return shared["stats"]


def _stats_for(data, basis) -> RecordStats:
    """The statistics of ``data``; those of a Basis fitted on this very Dataset when one is given."""
    if isinstance(data, xr.Dataset) and basis is not None and not isinstance(basis, str):
        s = getattr(basis, "stats_", None)
        if isinstance(s, RecordStats) and s.ds is data:
            return s
    return as_stats(data)


def _check_scope(value, name: str) -> str:
    if value not in SCOPES:
        other = "two numbers (lower, upper)" if name == "range" else "a fitted Basis"
        raise InputError(f"{name} must be 'store' (that of the whole store the data were selected from), 'selection' "
                         f"(that of the data alone) or {other}; got {value!r}.")
    return value


def _fitted_on_store(basis, stats: RecordStats) -> RecordStats | None:
    """The whole-store statistics a given basis was fitted on, if it was fitted on ``stats``' store."""
    own = getattr(basis, "stats_", None)
    if not isinstance(own, RecordStats) or not is_whole(own.ds):
        return None
    mine, theirs = record_index(stats.ds), record_index(own.ds)
    if own is stats or (mine is not None and theirs is not None and mine.tables is theirs.tables):
        return own
    return None


def choose_basis(data, basis=None) -> tuple:
    """(statistics of ``data``, the basis, its scope, the store's statistics or None) for ``basis`` as in
    :func:`resolve`; reads pass 1 only (of the store for ``"store"``)."""
    stats = _stats_for(data, basis)
    if basis is None and hasattr(data, "components_"):
        basis = data
    basis = DEFAULT if basis is None else basis
    if isinstance(basis, str):
        basis_scope = _check_scope(basis, "basis")
        store = store_stats(stats) if basis_scope == "store" else None
        basis = default_basis(store if store is not None else stats)
    elif hasattr(basis, "components_") and hasattr(basis, "mean_"):
        basis_scope, store = "given", _fitted_on_store(basis, stats)
    else:
        raise InputError(f"basis must be 'store', 'selection' or a fitted Basis; got {type(basis).__name__}.")
    if store is not None and store is not stats:
        stats.rows_from(store)
    return stats, basis, basis_scope, store


def resolve(data, basis=None, range=None) -> Scope:
    """The basis and the coefficient range for an analysis of ``data``.

    ``basis``: ``"store"`` (default: the PCA of every filter of the store ``data`` was selected from, as in the
    notebook), ``"selection"`` (of ``data``'s filters alone) or a fitted basis; a Basis passed as ``data`` is the
    basis. ``range``: ``"store"``, ``"selection"`` or (lower, upper); by default that of the filters the basis
    comes from (a given basis: the store's if it was fitted on the whole store, else ``data``'s own).
    """
    stats, basis, basis_scope, store = choose_basis(data, basis)
    if range is None:
        range_scope = "selection" if basis_scope == "selection" or (basis_scope == "given" and store is None) \
            else "store"
    elif isinstance(range, str):
        range_scope = _check_scope(range, "range")
    else:
        range_scope = "given"
    if range_scope == "store":
        store = store if store is not None else store_stats(stats)
        lo, hi = store.coef_range(basis)
        if store is not stats:
            stats.rows_from(store)             # the store's pass 2 gives the selection's sparsity rows too
    elif range_scope == "selection":
        lo, hi = stats.coef_range(basis)
    else:
        lo, hi = _check_range(range)
    return Scope(stats, basis, (lo, hi), basis_scope, range_scope)


def _check_range(range) -> tuple:
    try:
        lo, hi = (float(v) for v in range)
    except (TypeError, ValueError):
        lo = hi = np.nan
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise InputError(f"range must be two finite numbers, lower < upper, or 'store' or 'selection'; got "
                         f"{range!r}.")
    return lo, hi
