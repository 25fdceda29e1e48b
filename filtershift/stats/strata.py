"""Drift between groups inside strata: ``drift --by Robust --within training_dataset``.

A drift between two groups can come from what else differs between them (robust models may be trained on other data
sets than normal ones). Conditioning on a stratum compares like with like: the histograms of the combined grouping
(stratum x group) are compared only within each stratum, and the per-stratum drifts are pooled with weights equal to
the pair's filters in that stratum (a stratum where one of the two groups has no filters does not enter the pair's
pooled value). Everything comes from one combined :func:`distributions`: no pass over the data beyond its own, and
one global coefficient range and basis for every stratum.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from filtershift.errors import InputError
from filtershift.metrics import metric as declared
from filtershift.stats._attrs import describe
from filtershift.stats.distributions import distributions
from filtershift.stats.divergence import drift


def conditional_drift(data, basis=None, by="task", within="training_dataset", metric: str = "kl_sym",
                      bins: int = 70, **kwargs) -> xr.Dataset:
    """The drift between the groups of ``by`` computed inside each stratum of ``within``, and pooled.

    Parameters
    ----------
    data : xarray.Dataset or RecordStats or Basis
        As for :func:`distributions`.
    basis : Basis, optional
        The basis (default: fitted on ``data``).
    by : str
        The grouping compared (a coordinate or column name, ``depth`` or ``model``).
    within : str
        The grouping that defines the strata.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric (see :func:`drift`).
    bins : int, default 70
        Histogram bins per component.
    **kwargs
        Passed to :func:`distributions` (``min_filters``, ``min_models``, ``keep_missing``, ``range``).

    Returns
    -------
    xarray.Dataset
        ``drift`` (stratum, group_a, group_b): the drift inside each stratum (NaN where a group has no filters in
        it); ``weight`` (stratum, group_a, group_b): the pair's filters in the stratum; ``pooled`` (group_a,
        group_b): the weighted mean over strata; ``pooled_weight``: the weights' sum; ``n_filters`` and
        ``n_models`` (stratum, group). Attrs ``metric``, ``by``, ``within``.

    Raises
    ------
    filtershift.errors.InputError
        If ``by`` and ``within`` are the same grouping, or as :func:`distributions`.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> c = filtershift.conditional_drift(ds, by="task", within="training_dataset")
    >>> c["pooled"].dims
    ('group_a', 'group_b')
    """
    if by == within:
        raise InputError(f"--by and --within name the same grouping ({by!r}); choose two different ones.")
    m = declared(metric)
    dist = distributions(data, basis, by=[within, by], bins=bins, **kwargs)
    keys = dist.attrs["by"]
    within_key, by_key = keys[0], keys[1]
    full = drift(dist, metric).values
    stratum_of = np.asarray(dist[within_key].values).astype(str)
    group_of = np.asarray(dist[by_key].values).astype(str)
    # the strata in the grouping's label order (the combined groups are ordered by it; depth: shallow first)
    strata, groups = list(dict.fromkeys(stratum_of)), sorted(set(group_of))
    s_idx = {s: i for i, s in enumerate(strata)}
    g_idx = {g: i for i, g in enumerate(groups)}
    shape = (len(strata), len(groups), len(groups))
    per, weight = np.full(shape, np.nan), np.zeros(shape)
    n_filters = np.zeros((len(strata), len(groups)), np.int64)
    n_models = np.zeros((len(strata), len(groups)), np.int64)
    nf, nm = dist["n_filters"].values, dist["n_models"].values
    for name, s in s_idx.items():
        idx = np.flatnonzero((stratum_of == name) & (nf > 0))
        g = np.array([g_idx[x] for x in group_of[idx]], np.int64)
        n_filters[s, g], n_models[s, g] = nf[idx], nm[idx]
        per[s][np.ix_(g, g)] = full[np.ix_(idx, idx)]
        pair = nf[idx][:, None] + nf[idx][None, :]
        np.fill_diagonal(pair, nf[idx])
        weight[s][np.ix_(g, g)] = pair
    present = np.isfinite(per)
    total = np.where(present, weight, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.where(present, per * weight, 0.0).sum(0) / total
    pooled[total == 0] = np.nan
    coords = {"stratum": strata, "group_a": groups, "group_b": groups, "group": groups}
    out = xr.Dataset({
        "drift": describe(xr.DataArray(per, dims=("stratum", "group_a", "group_b")), m.long_name, m.units,
                          f"{m.long_name} between the groups of {by_key} inside each stratum of {within_key}"),
        "weight": describe(xr.DataArray(weight, dims=("stratum", "group_a", "group_b")), "pooling weight", "1",
                           "filters of the two groups in the stratum"),
        "pooled": describe(xr.DataArray(pooled, dims=("group_a", "group_b")), f"pooled {m.long_name}", m.units,
                           "mean over strata of the drift inside them, weighted by the pair's filters"),
        "pooled_weight": describe(xr.DataArray(total, dims=("group_a", "group_b")), "pooled weight", "1",
                                  "filters of the pair over the strata where both groups have filters"),
        "n_filters": describe(xr.DataArray(n_filters, dims=("stratum", "group")), "filters", "1",
                              "filters per stratum and group"),
        "n_models": describe(xr.DataArray(n_models, dims=("stratum", "group")), "models", "1",
                             "models per stratum and group"),
    }, coords=coords)
    out.attrs.update({"metric": metric, "by": by_key, "within": within_key})
    return describe(out, f"{m.long_name} by {by_key} within {within_key}", m.units,
                    "drift inside each stratum and pooled with the pairs' filters as weights")
