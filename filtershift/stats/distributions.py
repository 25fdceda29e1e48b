"""Per-group coefficient distributions and 2D densities, from the cached per-record passes.

:func:`distributions` sums pass 3's per-record histograms into groups (no new pass, however many groupings);
:func:`density2d` takes the 2D histogram pass 3 counted when it was asked for with it
(:meth:`RecordStats.histograms`), else counts it in a pass of its own (:data:`filtershift.stats.histograms.HIST2D`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats._attrs import describe, describe_vars
from filtershift.stats.cache import check_bins
from filtershift.stats.grouping import group_comoments, group_sum, groups
from filtershift.stats.histograms import HIST2D, Density2D, coarsen2d, normalise
from filtershift.stats.scope import resolve


def distributions(data, basis=None, by="task", bins: int = 70, *, min_filters: int = 1000, min_models: int = 2,
                  keep_empty: bool = False, fine_bins: int = 0, range=None,
                  keep_missing: bool = False) -> xr.Dataset:
    """Per-group coefficient distributions: a 70-bin histogram per component over one global range.

    ``data`` is a Dataset, a :class:`RecordStats` or a fitted basis (then its statistics are reused, so asking
    for more groupings costs no pass). The result has dims (group, component, bin) with ``p`` (normalised
    histograms, NaN for empty groups), ``counts``, ``n_filters``, ``n_models``, ``small`` (under ``min_filters``
    or ``min_models``; ``by="model"`` ignores ``min_models``: each group is one model by design), the basis'
    ``explained_variance_ratio`` (drift weights), and the per-(group, model)
    ``member_counts`` used by :func:`drift_ci`. ``fine_bins`` > 0 adds ``fine_counts`` for :func:`kde`. Filters
    whose label is missing are left out of the groups, as in a pandas ``groupby`` (attrs ``n_filters_dropped``,
    ``n_models_dropped``), unless ``keep_missing``. The basis and the histogram range are those of the whole store
    by default, also for a selection (as in the CNN-Filter-DB notebook); ``basis="selection"`` and
    ``range="selection"`` take them from the selected filters alone (:mod:`filtershift.stats.scope`). attrs
    ``basis_scope`` and ``range_scope`` say which was used.

    Parameters
    ----------
    data : xarray.Dataset, RecordStats or Basis
        A filtershift Dataset, its :class:`RecordStats`, or a fitted :class:`Basis` (its statistics are reused).
    basis : {"store", "selection"} or Basis, default "store"
        The basis whose coefficients are histogrammed: the full-rank PCA of every filter of the store ``data`` was
        selected from (``"store"``; for a whole Dataset, its own), of ``data``'s filters alone (``"selection"``),
        or a fitted basis (a Basis passed as ``data`` is used when this is not given).
    by : str or list of str, default "task"
        Grouping key or keys: a grouping coordinate of the Dataset or its column name, ``"depth"`` (deciles),
        ``"model"`` or ``"conv_depth"``, a binned numeric column (``"total_filters:quantiles=5"``) or
        ``"NAME:each"`` (a cell "A, B" puts its filters in the groups A and B: groups may overlap); several keys
        group by their observed combinations.
    bins : int, default 70
        Number of histogram bins per component (a positive integer).
    min_filters : int, default 1000
        Groups with fewer filters are flagged ``small``.
    min_models : int, default 2
        Groups with fewer models are flagged ``small``.
    keep_empty : bool, default False
        Keep every combination of the keys' labels as a group, even those without filters (NaN ``p``).
    fine_bins : int, default 0
        If > 0, also count the coefficients in this many fine bins over the same range (``fine_counts``, for
        :func:`kde`); a non-negative integer.
    range : {"store", "selection"} or tuple of float, optional
        The histogram range: the coefficient range (all components) of the store's filters, of ``data``'s filters,
        or (lower, upper); default that of the filters the basis comes from (for a given basis, the store's if it
        was fitted on the whole store, else ``data``'s).
    keep_missing : bool, default False
        Keep the filters of models whose label of a key is missing as a group of their own (labelled as the
        coordinate's ``missing`` attr says, ``"unknown"``); by default they are left out.

    Returns
    -------
    xarray.Dataset
        Dims (group, component, bin, member), coords ``group``, ``component``, ``bin_edges`` (bin_edge),
        ``bin_lower``/``bin_upper`` (bin), and one coordinate per key along ``group`` when grouped by several
        keys. Variables: ``p`` and ``counts`` (group, component, bin), ``n_filters``, ``n_models``, ``small``
        (group), ``explained_variance_ratio`` and ``explained_variance`` (component), ``coef_var`` (group,
        component; exact per-group coefficient variance, ddof=1), ``member_counts`` (member, component, bin),
        ``member_group`` and ``member_model`` (member); with ``fine_bins``, ``fine_counts`` (group, component,
        fine_bin) and ``fine_edges`` (fine_edge). attrs ``by``, ``bins``, ``range``, ``basis_scope`` and
        ``range_scope`` (``"store"``, ``"selection"`` or ``"given"``), ``basis_n_filters``, ``min_filters``,
        ``min_models``, ``n_filters_total``, ``normalisation``, ``n_filters_dropped`` and ``n_models_dropped``
        (left out for a missing label; 0 with ``keep_missing``), ``missing_labels`` (``"dropped"`` or ``"kept"``),
        and ``overlapping`` (True, present only when a ``NAME:each`` key puts some filters in several groups).

    Raises
    ------
    filtershift.errors.InputError
        If ``data`` is not a filtershift Dataset, RecordStats or fitted Basis, ``bins``/``fine_bins`` are not
        valid integers, ``basis`` or ``range`` is not one of the choices, or a grouping key is unknown.

    See Also
    --------
    drift, drift_ci, kde

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> basis = filtershift.fit_basis(ds)
    >>> dist = filtershift.distributions(ds, basis, by="task")
    >>> dist["p"].dims
    ('group', 'component', 'bin')
    """
    scope = resolve(data, basis, range)
    stats, basis = scope.stats, scope.basis
    m = stats.moments()
    h = stats.histograms(basis, bins, fine_bins, range=scope.range)
    g = groups(m, by, keep_empty=keep_empty, keep_missing=keep_missing, tables=stats.tables)
    counts = group_sum(g.membership, h["counts"].values, g.size)
    n_filters = group_sum(g.membership, m["n"].values, g.size)
    rows, in_group = g.members
    members = pd.DataFrame({"group": in_group, "model": m["model_id"].values[rows]})
    pairs = members.drop_duplicates().sort_values(["group", "model"]).reset_index(drop=True)
    member_of = pd.MultiIndex.from_frame(pairs).get_indexer(pd.MultiIndex.from_frame(members))
    member_counts = group_sum((rows, member_of), h["counts"].values, len(pairs))
    n_models = np.bincount(pairs["group"].to_numpy(), minlength=g.size)
    edges = h["bin_edges"].values
    data_vars = {
        "p": (("group", "component", "bin"), normalise(counts, edges)),
        "counts": (("group", "component", "bin"), counts),
        "n_filters": ("group", n_filters.astype(np.int64)),
        "n_models": ("group", n_models.astype(np.int64)),
        "small": ("group", (n_filters < min_filters) | ((n_models < min_models) & (tuple(g.by) != ("model",)))),
        "explained_variance_ratio": ("component", np.asarray(basis.explained_variance_ratio_, np.float64)),
        "explained_variance": ("component", np.asarray(basis.explained_variance_, np.float64)),
        "member_counts": (("member", "component", "bin"), member_counts),
        "member_group": ("member", pairs["group"].to_numpy(np.int64)),
        "member_model": ("member", pairs["model"].to_numpy(np.int64)),
    }
    if fine_bins:
        data_vars["fine_counts"] = (("group", "component", "fine_bin"),
                                    group_sum(g.membership, h["fine_counts"].values, g.size))
    # exact per-group coefficient variance (for KDE bandwidths), from the scaled co-moments
    gn, _, gc = group_comoments(g.membership, m["n"].values, m["scaled_sum"].values,
                                       m["scaled_comoment"].values, g.size)
    comps = np.asarray(basis.components_, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.einsum("jk,gkl,jl->gj", comps, gc, comps) / (gn[:, None] - 1)
    data_vars["coef_var"] = (("group", "component"), np.where(gn[:, None] > 1, var, np.nan))
    coords = {
        "group": np.array(g.labels, dtype=object),
        "component": np.arange(comps.shape[0]),
        "bin_edges": ("bin_edge", edges),
        "bin_lower": ("bin", edges[:-1]),
        "bin_upper": ("bin", edges[1:]),
    }
    if fine_bins:
        coords["fine_edges"] = ("fine_edge", h["fine_edges"].values)
    if len(g.by) > 1:
        coords.update({name: ("group", np.array(labels, dtype=object)) for name, labels in g.columns.items()})
    out = xr.Dataset(data_vars, coords=coords)
    out.attrs.update({"by": list(g.by), "bins": int(bins), "range": list(h.attrs["range"]),
                      "min_filters": int(min_filters), "min_models": int(min_models),
                      "n_filters_total": int(m["n"].values.sum()),
                      "normalisation": "density, empty bins = float32 eps, then sum 1", **g.dropped(m),
                      **scope.attrs()})
    if g.overlapping:
        out.attrs["overlapping"] = True
    out["explained_variance_ratio"].attrs["description"] = ("share of the total variance per component (the drift "
                                                            "weights)")
    out["small"].attrs["description"] = (f"n_filters < {min_filters}" if tuple(g.by) == ("model",) else
                                         f"n_filters < {min_filters} or n_models < {min_models}")
    describe(out, "coefficient distributions", "1",
             f"histograms of the PCA coefficients per {' x '.join(g.by)} group and component, {bins} bins over "
             "one global range")
    return describe_vars(out)


def density2d(data, basis=None, components=(0, 1), bins: int = 512, by=None, keep_empty: bool = False,
              range=None, min_count: float = 0, keep_missing: bool = False) -> xr.DataArray:
    """2D histogram (counts) of two components, numpy.histogram2d's layout: x is the first component, y the second.

    Without ``by``, the counts pass 3 made when it was asked for this histogram (:meth:`RecordStats.histograms`
    with a :class:`~filtershift.stats.histograms.Density2D`), else one extra pass; with ``by``, one histogram per
    group (group, x, y), one extra pass. Bins follow numpy.histogram2d: closed on the left, the last one on both
    sides; filters whose coefficients fall outside the range (or are not finite) are not counted.

    Parameters
    ----------
    data : xarray.Dataset, RecordStats or Basis
        A filtershift Dataset, its :class:`RecordStats`, or a fitted :class:`Basis` (its statistics are reused).
    basis : {"store", "selection"} or Basis, default "store"
        The basis whose coefficients are histogrammed, as for :func:`distributions`.
    components : tuple of int, default (0, 1)
        The two component indices (x, y), each in [0, n_components).
    bins : int, default 512
        Number of bins along each axis (a positive integer); fewer with ``min_count``.
    by : str or list of str, optional
        Grouping key or keys, as for :func:`distributions`; default None, one histogram over all filters.
    keep_empty : bool, default False
        With ``by``, keep every combination of the keys' labels as a group, even those without filters.
    range : {"store", "selection"} or tuple of float, optional
        (lower, upper) of both axes, or the coefficient range of the store or of the data, as for
        :func:`distributions`.
    min_count : float, default 0
        Halve the bins per axis (2 x 2 bins summed) while the counted filters average fewer than ``min_count`` per
        occupied bin, down to 16 bins per axis (:func:`~filtershift.stats.histograms.coarsen2d`); 0 keeps ``bins``.
    keep_missing : bool, default False
        With ``by``, keep the filters whose label is missing as a group of their own, as for
        :func:`distributions`; by default they are left out.

    Returns
    -------
    xarray.DataArray
        ``density2d``: counts with dims (x, y), or (group, x, y) with ``by``; coords ``x``, ``y`` (bin centres)
        and ``group``; attrs ``components``, ``range``, ``bins`` (used), ``bins_requested``, ``min_count``,
        ``bin_edges``, ``basis_scope``, ``range_scope``, ``basis_n_filters`` and, without ``by``,
        ``n_filters`` (all filters, counted or not); with ``by``,
        those of :func:`distributions` on the filters left out for a missing label.

    Raises
    ------
    filtershift.errors.InputError
        If ``components`` are not two valid indices, ``bins`` is not a positive integer, the range is not two
        finite increasing numbers, or a grouping key is unknown.
    """
    bins = check_bins(bins, "bins")
    scope = resolve(data, basis, range)
    stats, basis, (lo, hi) = scope.stats, scope.basis, scope.range
    nc = basis.components_.shape[0]
    j0, j1 = (int(c) for c in components)
    if not (0 <= j0 < nc and 0 <= j1 < nc):
        raise InputError(f"components must be two indices in [0, {nc}); got {components!r}.")
    if not (isinstance(min_count, (int, float)) and min_count >= 0):
        raise InputError(f"min_count must be a number >= 0; got {min_count!r}.")
    spec = Density2D((j0, j1), bins, (lo, hi))
    m = stats.moments()
    attrs = scope.attrs()
    if by is None:
        counts, labels = stats.density(basis, spec)[None].copy(), ["all"]
        attrs["n_filters"] = int(m["n"].values.sum())
    else:
        g = groups(m, by, keep_empty=keep_empty, keep_missing=keep_missing, tables=stats.tables)
        attrs.update(g.dropped(m))
        codes, sets = g.atoms(len(m["n"]))
        params = {"mean": np.asarray(basis.mean_, np.float64),
                  "components": np.ascontiguousarray(basis.components_, np.float64), **spec.params(),
                  "pair_record": m["record"].values, "pair_group": codes,
                  "n_groups": len(g.labels) if sets is None else int(codes.max(initial=-1)) + 1}
        counts, labels = stats.run(HIST2D, params=params, desc="2D density")["density"], g.labels
        if sets is not None:  # overlapping groups: one histogram per set of groups, added to each of its groups
            counts = group_sum(sets, counts, g.size)
    counts, edges = coarsen2d(counts, spec.edges, min_count)
    centers = (edges[:-1] + edges[1:]) / 2
    attrs.update({"components": [j0, j1], "range": [lo, hi], "bins": len(edges) - 1, "bins_requested": bins,
                  "min_count": min_count, "bin_edges": edges,
                  "description": f"counts of (component {j0}, component {j1}) coefficients",
                  "long_name": "2D coefficient histogram", "units": "1"})
    da = xr.DataArray(counts, dims=("group", "x", "y"),
                      coords={"group": np.array(labels, dtype=object), "x": centers, "y": centers},
                      name="density2d", attrs=attrs)
    return da if by is not None else da.isel(group=0, drop=True)
