"""The per-record cache: :class:`RecordStats` runs each pass over a Dataset at most once per setting and keeps
the small per-record results.

Pass 1 moments (:data:`filtershift.stats.moments.MOMENTS`), pass 2 coefficient range and sparsity
(:data:`filtershift.stats.moments.RANGE_SPARSITY`), pass 3 histograms (:data:`filtershift.stats.histograms.HISTOGRAMS`,
which also counts a 2D histogram when asked for with it). The full analysis (basis, any number of groupings, drift,
intervals, per-group bases, the 2D density) makes exactly 3 passes;
:meth:`RecordStats.run` runs any other :class:`~filtershift.stats.reduction.Statistic` and counts it in
:attr:`RecordStats.passes`.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats import histograms, moments
from filtershift.stats._attrs import PASS_ATTRS, describe, describe_vars
from filtershift.stats.pca import pca_from_moments, scaled_totals
from filtershift.stats.reduction import SPLIT_EVERY, reduce
from filtershift.store.dataset import is_whole, record_table
from filtershift.store.index import RecordIndex


def record_index(ds: xr.Dataset) -> RecordIndex | None:
    """The Dataset's record index, or None (a Dataset whose index was dropped, or one reopened from a copy)."""
    index = ds.xindexes.get("record")
    return index if isinstance(index, RecordIndex) else None


def _code_coords(ds: xr.Dataset) -> list:
    """Grouping coordinates: the index's (labels from its tables) and any other per-filter coordinate carrying a
    ``labels`` attribute (codes into those labels, or the labels themselves)."""
    index = record_index(ds)
    own = [n for n in index.tables.grouping if n in ds.coords] if index is not None else []
    return own + [name for name, c in ds.coords.items()
                  if name not in own and c.dims == ("filter",) and "labels" in c.attrs]


def _as_codes(values: np.ndarray, labels: list) -> np.ndarray:
    """Per-record values of a grouping coordinate as int32 codes into ``labels`` (-1: not a label)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int32)
    return pd.Index(list(labels)).get_indexer(values.astype(object)).astype(np.int32)


def basis_key(mean: np.ndarray, components: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(mean, np.float64).tobytes())
    h.update(np.ascontiguousarray(components, np.float64).tobytes())
    return h.hexdigest()


class RecordStats:
    """Per-record sufficient statistics of one Dataset, each pass computed once and cached.

    - :meth:`moments` (pass 1): ``n``, ``scaled_sum``, ``scaled_comoment``, ``raw_sum``, ``raw_comoment``,
      ``raw_absmax``, ``filter_absmax_min``, ``raw_l1_sum``, ``raw_l2_sum`` plus the meta (``model_id``, ``conv_depth``,
      ``conv_depth_norm``) and every group code of each record.
    - :meth:`range_sparsity` (pass 2, for a basis and a sparsity eps): ``coef_min``, ``coef_max``, ``sparse_count``,
      ``nonsparse_n``, ``nonsparse_sum``, ``nonsparse_comoment``; :meth:`sparsity` runs it with the default basis
      when none was asked for yet.
    - :meth:`histograms` (pass 3, for a basis and bins): ``counts`` (record, component, bin); given a
      :class:`~filtershift.stats.histograms.Density2D`, the same pass counts it too (:meth:`density`).

    A basis is anything with ``mean_`` and ``components_`` (a fitted :class:`~filtershift.stats.basis.Basis`);
    without one, passes 2 and 3 use :attr:`default_basis`, or else the full PCA of pass 1 (the same numbers).
    Co-moments are centred sums of outer products (float64); :attr:`passes` counts the passes over the data.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`~filtershift.open_store` or :func:`~filtershift.from_arrays`), with a
        ``weights`` variable.
    split_every : int, default 8
        Fan-in of the tree reduction that combines the per-chunk partial statistics.

    Attributes
    ----------
    ds : xarray.Dataset
        The Dataset the statistics are computed on.
    split_every : int
        The reduction fan-in.
    default_basis : Basis or None
        The full-rank basis used by passes 2 and 3 when none is given (set by fitting a full-rank Basis on these
        statistics); None until then.
    passes : int
        Number of passes run over the data so far.

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` has no ``weights`` variable.
    """

    def __init__(self, ds: xr.Dataset, split_every: int = SPLIT_EVERY):
        if "weights" not in ds:
            raise InputError("record_stats: the Dataset has no 'weights' variable; open a store with "
                             "filtershift.open_store or build one with filtershift.from_arrays.")
        self.ds = ds
        self.split_every = split_every
        self.default_basis = None
        self._passes = 0
        self._moments = None
        self._pca = None
        self._range_sparsity = {}
        self._hist = {}
        self._density = {}
        index = record_index(ds)
        if index is not None and "dataset" in index.tables.shared and is_whole(ds):
            index.tables.shared.setdefault("stats", self)   # the whole store's statistics, which selections reuse

    def __repr__(self) -> str:
        return f"<RecordStats of {self.ds.sizes['filter']:,} filters, {self.passes} pass(es) run>"

    @property
    def passes(self) -> int:
        """Passes over the data run so far (every :meth:`run`)."""
        return self._passes

    def run(self, stat, **kw) -> dict:
        """One pass of ``stat`` over the data (:func:`filtershift.stats.reduction.reduce` with this cache's
        ``split_every``; keywords as there), counted in :attr:`passes`. Not cached: the caller keeps the result.
        Passes alternate their scan direction (the result does not depend on it), so that each tends to start on
        what the previous one read last, which the page cache still holds on a store larger than memory."""
        self._passes += 1
        return reduce(self.ds, stat, split_every=self.split_every, descending=self._passes % 2 == 1, **kw)

    def set_default_basis(self, basis) -> None:
        """Use ``basis`` (full rank) when passes 2 and 3 are asked for without one, unless one is set already."""
        if self.default_basis is None:
            self.default_basis = basis

    def _basis(self, basis):
        """``basis``, else the default basis, else the full PCA of pass 1 (no new pass)."""
        if basis is not None:
            return basis
        if self.default_basis is not None:
            return self.default_basis
        if self._pca is None:
            m = self.moments()
            n, total, com = scaled_totals(m["n"].values, m["scaled_sum"].values, m["scaled_comoment"].values)
            if n < 2:
                raise InputError(f"fit: a basis needs at least 2 filters; the data hold {n}.")
            mean, components, _, _ = pca_from_moments(n, total, com)
            self._pca = SimpleNamespace(mean_=mean, components_=components)
        return self._pca

    def tables(self) -> tuple:
        """(records, models) tables of these filters (for groupings of numeric columns)."""
        from filtershift.store.dataset import models, records

        return records(self.ds), models(self.ds)

    def rows_from(self, other: RecordStats) -> bool:
        """Take pass 1 and every pass 2 that ``other`` ran (and this has not) from ``other``'s per-record rows, when
        these filters are whole records of the same tables (a selection of ``other``'s Dataset by records:
        ``query``, ``sel``): per-record values do not depend on which other records are present, so they are not
        read again. True if taken; records cut by a selection (``isel`` of a slice) or coordinates of their own
        need their passes."""
        mine, theirs = record_index(self.ds), record_index(other.ds)
        if mine is None or theirs is None or mine.tables is not theirs.tables or other._moments is None \
                or set(_code_coords(self.ds)) != set(_code_coords(other.ds)):
            return False
        n = mine.tables.records["n"].to_numpy(np.int64)[mine.row]
        if np.any(mine.offset != 0) or np.any(mine.stop - mine.start != n) or len(np.unique(mine.row)) != len(mine.row):
            return False
        ids = np.unique(mine.tables.values["record"][mine.row]).astype(np.int64)
        if not np.isin(ids, other._moments["record"].values).all():
            return False
        if self._moments is None:
            self._moments = other._moments.sel(record=ids)
        for key, s in other._range_sparsity.items():
            self._range_sparsity.setdefault(key, s.sel(record=ids))
        return True

    def moments(self) -> xr.Dataset:
        """Pass 1 (once): per-record counts, sums, co-moments, norms and group codes."""
        if self._moments is None:
            index = record_index(self.ds)
            codes = _code_coords(self.ds)
            names = list(moments.META_FIELDS) + codes
            own = {n for n in names if index is not None and self.ds.xindexes.get(n) is index}
            rest = [n for n in names if n not in own]
            part = self.run(moments.MOMENTS, coords=["record", *rest], names=rest, desc="moments (pass 1/3)")
            if own:
                rows = record_table(self.ds).loc[part["record"]]
                part.update({n: rows[n].cat.codes.to_numpy(np.int32) if n in codes else rows[n].to_numpy()
                             for n in own})
            attrs = {n: index.label_attrs(n) if n in own else dict(self.ds[n].attrs) for n in codes}
            for n in codes:
                part[n] = _as_codes(part[n], attrs[n]["labels"])
            dims = {1: ("record",), 2: ("record", "k"), 3: ("record", "k", "k2")}
            data = {k: (dims[np.ndim(v)], v) for k, v in part.items() if k != "record"}
            m = xr.Dataset(data, coords={"record": part["record"].astype(np.int64)})
            describe(describe_vars(m, PASS_ATTRS), "per-record moments (pass 1)", "1",
                     "counts, sums and co-moments of each record's filters, as stored and scaled")
            for name in codes:
                describe(m[name], f"{name} code", "1", f"index of the record's {name} in the labels attr (-1: none)")
                m[name].attrs.update(attrs[name])
            m.attrs.update({"pass": 1,
                            "comoment": "centred sum of outer products over the record's filters (float64)",
                            "scaled": "filter / max|filter|; all-zero filters stay zero"})
            self._moments = m
        return self._moments

    def range_sparsity(self, basis=None, sparsity_eps: float = 0.01) -> xr.Dataset:
        """Pass 2 (once per basis and eps): coefficient min/max per record and component, and sparsity."""
        basis = self._basis(basis)
        if not (0.0 <= float(sparsity_eps) < 1.0):
            raise InputError(f"sparsity_eps must be in [0, 1); got {sparsity_eps!r}.")
        key = (basis_key(basis.mean_, basis.components_), float(sparsity_eps))
        if key not in self._range_sparsity:
            m = self.moments()
            n = m["n"].values.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_mean = np.nan_to_num(m["raw_sum"].values / n[:, None])
            clean = moments.clean_records(m["raw_absmax"].values, m["filter_absmax_min"].values, float(sparsity_eps))
            params = {"record": m["record"].values, "raw_absmax": m["raw_absmax"].values, "raw_mean": raw_mean,
                      "clean": clean, "eps": float(sparsity_eps), "mean": np.asarray(basis.mean_, np.float64),
                      "components": np.ascontiguousarray(basis.components_, np.float64)}
            part = self.run(moments.RANGE_SPARSITY, params=params, desc="range and sparsity (pass 2/3)",
                            records=m["record"].values,
                            context={"clean": clean, "n": m["n"].values, "raw_sum": m["raw_sum"].values,
                                     "raw_comoment": m["raw_comoment"].values})
            dims = {"coef_min": ("record", "component"), "coef_max": ("record", "component"),
                    "sparse_count": ("record",), "nonsparse_n": ("record",), "nonsparse_sum": ("record", "k"),
                    "nonsparse_comoment": ("record", "k", "k2")}
            s = xr.Dataset({k: (dims[k], part[k]) for k in dims}, coords={"record": m["record"].values})
            describe(describe_vars(s, PASS_ATTRS), "per-record coefficient range and sparsity (pass 2)", "1",
                     f"coefficient range per component and sparse filters at sparsity_eps={float(sparsity_eps)}")
            s.attrs.update({"sparsity_eps": float(sparsity_eps), "basis": key[0], "pass": 2})
            self._range_sparsity[key] = s
        return self._range_sparsity[key]

    def sparsity(self, eps: float = 0.01) -> xr.Dataset:
        """Pass-2 sparsity statistics for ``eps``, reusing any pass 2 already run with that eps."""
        for (_, e), s in self._range_sparsity.items():
            if e == float(eps):
                return s
        return self.range_sparsity(None, eps)

    def coef_range(self, basis=None) -> tuple[float, float]:
        """[min, max] of all coefficients of all components over these filters (np.histogram's range rule for
        a degenerate range: widened by 0.5 each side)."""
        basis = self._basis(basis)
        key = basis_key(basis.mean_, basis.components_)
        s = next((v for (b, _), v in self._range_sparsity.items() if b == key), None)
        if s is None:
            s = self.range_sparsity(basis)
        lo, hi = float(np.min(s["coef_min"].values, initial=np.inf)), float(np.max(s["coef_max"].values,
                                                                                     initial=-np.inf))
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise InputError("the data hold no filters, so no coefficient range; select a non-empty subset.")
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        return lo, hi

    def histograms(self, basis=None, bins: int = 70, fine_bins: int = 0, range=None,
                   density: histograms.Density2D | None = None) -> xr.Dataset:
        """Pass 3 (once per basis, bins and range): per record x component x bin counts over one range. With
        ``density`` the same pass also counts that 2D histogram (kept for :meth:`density`); if pass 3 ran
        already without it, :meth:`density` counts it in a pass of its own. A request without ``fine_bins`` is
        served by a pass that counted fine bins too (the result then holds ``fine_counts`` as well)."""
        basis = self._basis(basis)
        bins, fine_bins = check_bins(bins, "bins"), check_bins(fine_bins, "fine_bins", allow_zero=True)
        lo, up = self.coef_range(basis) if range is None else (float(range[0]), float(range[1]))
        key = (basis_key(basis.mean_, basis.components_), bins, fine_bins, lo, up)
        if not fine_bins and key not in self._hist:
            # counts with fine counts beside them serve a request without: no pass of its own
            key = next((k for k in self._hist if (k[:2], k[3:]) == (key[:2], key[3:])), key)
        dkey = None if density is None else (key[0], density)
        if key not in self._hist:
            m = self.moments()
            edges = np.linspace(lo, up, bins + 1)
            fine = np.linspace(lo, up, fine_bins + 1) if fine_bins else np.zeros(0)
            params = {"mean": np.asarray(basis.mean_, np.float64),
                      "components": np.ascontiguousarray(basis.components_, np.float64),
                      "edges": edges, "fine_edges": fine}
            if dkey is not None and dkey not in self._density:
                params.update(density.params())
            part = self.run(histograms.HISTOGRAMS, params=params, desc="histograms (pass 3/3)",
                            records=m["record"].values)
            if "density" in part:
                self._density[dkey] = part["density"][0]
            data = {"counts": (("record", "component", "bin"), part["counts"])}
            if fine_bins:
                data["fine_counts"] = (("record", "component", "fine_bin"), part["fine_counts"])
            h = xr.Dataset(data, coords={"record": m["record"].values, "bin_edges": ("bin_edge", edges)})
            if fine_bins:
                h = h.assign_coords(fine_edges=("fine_edge", fine))
            describe(describe_vars(h, PASS_ATTRS), "per-record coefficient histograms (pass 3)", "1",
                     f"{bins} bins over [{lo:.6g}, {up:.6g}] per component")
            h.attrs.update({"basis": key[0], "range": [lo, up], "bins": bins, "pass": 3})
            self._hist[key] = h
        elif dkey is not None:
            self.density(basis, density)
        return self._hist[key]

    def density(self, basis=None, density: histograms.Density2D | None = None) -> np.ndarray:
        """The 2D counts (x bin, y bin) of ``density`` (default :class:`~filtershift.stats.histograms.Density2D`)
        over all filters: the ones pass 3 counted when :meth:`histograms` was asked for them, else counted now in
        a pass of its own (:data:`~filtershift.stats.histograms.HIST2D`), once per basis and density."""
        basis = self._basis(basis)
        density = histograms.Density2D() if density is None else density
        dkey = (basis_key(basis.mean_, basis.components_), density)
        if dkey not in self._density:
            params = {"mean": np.asarray(basis.mean_, np.float64),
                      "components": np.ascontiguousarray(basis.components_, np.float64), **density.params()}
            self._density[dkey] = self.run(histograms.HIST2D, params=params, desc="2D density")["density"][0]
        return self._density[dkey]

    def compute(self, basis=None, bins: int = 70, sparsity_eps: float = 0.01) -> RecordStats:
        """Run the three passes now (moments, range and sparsity, histograms); returns self."""
        basis = self._basis(basis)
        self.range_sparsity(basis, sparsity_eps)
        self.histograms(basis, bins)
        return self


def check_bins(bins, name, allow_zero=False) -> int:
    """``bins`` as an int, or an InputError naming ``name`` (positive; non-negative with ``allow_zero``)."""
    try:
        b = int(bins)
    except (TypeError, ValueError):
        b = -1
    if b != bins or b < (0 if allow_zero else 1):
        raise InputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer; got {bins!r}.")
    return b


def record_stats(ds: xr.Dataset, split_every: int = SPLIT_EVERY) -> RecordStats:
    """Lazy per-record statistics of ``ds``: nothing is computed until a pass is asked for.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset with a ``weights`` variable.
    split_every : int, default 8
        Fan-in of the tree reduction that combines the per-chunk partial statistics.

    Returns
    -------
    RecordStats
        The (empty) cache of per-record statistics of ``ds``.

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` has no ``weights`` variable.
    """
    return RecordStats(ds, split_every=split_every)


def as_stats(obj) -> RecordStats:
    """A RecordStats for a Dataset, a RecordStats, or a fitted Basis (its statistics)."""
    if isinstance(obj, RecordStats):
        return obj
    if isinstance(obj, xr.Dataset):
        return RecordStats(obj)
    stats = getattr(obj, "stats_", None)
    if isinstance(stats, RecordStats):
        return stats
    raise InputError(f"expected a filtershift Dataset or RecordStats, got {type(obj).__name__}.")
