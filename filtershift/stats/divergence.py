"""Drift between group distributions: symmetric KL (the reference), Jensen-Shannon and Wasserstein-1, all summed
over components with the explained-variance-ratio weights, plus bootstrap intervals over models.

Everything here works on the small output of :func:`distributions`; no pass over the data.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from filtershift.errors import InputError
from filtershift.metrics import metric as declared
from filtershift.stats._attrs import describe
from filtershift.stats.histograms import normalise


def pairwise(p: np.ndarray, weights: np.ndarray, metric: str = "kl_sym", widths=None) -> np.ndarray:
    """Weighted divergence for every pair of groups: ``p`` (..., group, component, bin), ``weights`` (component);
    returns (..., group, group). NaN rows/columns for groups whose histogram is NaN (empty groups).

    kl_sym: sum_k w_k (KL(p||q) + KL(q||p)); js: sum_k w_k JS(p, q) (natural log); w1: sum_k w_k W1(p, q) for
    masses at the bin centres (``widths``: bin widths).
    """
    m = declared(metric)
    p = np.asarray(p, np.float64)
    w = np.asarray(weights, np.float64)
    d = m.divergence(p, widths)
    out = np.einsum("...ghk,k->...gh", d, w)
    g = out.shape[-1]
    idx = np.arange(g)
    finite = np.isfinite(out[..., idx, idx])
    out[..., idx, idx] = np.where(finite, 0.0, np.nan)
    return out


def _check_dist(dist):
    if not isinstance(dist, xr.Dataset) or "p" not in dist or "explained_variance_ratio" not in dist:
        raise InputError("drift needs the result of filtershift.distributions(ds, basis, by=...).")


def normalised_for(dist, counts, metric):
    """The metric's histograms from counts: the reference normalisation for the ``smoothed`` metrics (KL, JS), the
    plain normalised counts (no eps floor) for the others (W1)."""
    edges = dist["bin_edges"].values
    if not declared(metric).smoothed:
        counts = np.asarray(counts, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return counts / counts.sum(-1, keepdims=True)
    return normalise(counts, edges)


#: attrs of :func:`~filtershift.stats.distributions.distributions` that a drift matrix carries on: what the grouping
#: left out for a missing label.
DROPPED = ("n_filters_dropped", "n_models_dropped", "missing_labels")


def _pair_coords(dist) -> dict:
    """The coordinates of a (group_a, group_b) result: labels, sizes and small flags of both sides."""
    labels = dist["group"].values
    coords = {"group_a": ("group_a", labels), "group_b": ("group_b", labels)}
    for var in ("n_filters", "n_models", "small"):
        coords[f"{var}_a"] = ("group_a", dist[var].values)
        coords[f"{var}_b"] = ("group_b", dist[var].values)
    return coords


def _labelled(dist, values, metric, name="drift") -> xr.DataArray:
    coords = _pair_coords(dist)
    attrs = {"metric": metric, "by": dist.attrs.get("by"), "bins": dist.attrs.get("bins"),
             "weights": "explained variance ratio per component",
             **{k: dist.attrs[k] for k in DROPPED if k in dist.attrs}}
    out = xr.DataArray(values, dims=("group_a", "group_b"), coords=coords, name=name, attrs=attrs)
    what = {"drift": "", "lower": "lower bound of the bootstrap interval of the ",
            "upper": "upper bound of the bootstrap interval of the ",
            "std": "bootstrap standard deviation of the "}[name]
    m = declared(metric)
    return describe(out, f"{what}{m.long_name}".strip(), m.units,
                    f"{what}{m.long_name} between the coefficient distributions of two groups, summed "
                    "over components weighted by the explained variance ratio"
                    + (" (natural log)" if m.units == "nats" else ""))


def drift(dist: xr.Dataset, metric: str = "kl_sym") -> xr.DataArray:
    """Drift matrix (group_a, group_b) of a distributions Dataset.

    Group sizes and ``small`` flags ride along as coordinates; empty groups give NaN rows and columns.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        Divergence per component, summed with the explained-variance-ratio weights: symmetric Kullback-Leibler
        (the reference), Jensen-Shannon (natural log) or Wasserstein-1 (see :mod:`filtershift.metrics`).

    Returns
    -------
    xarray.DataArray
        ``drift`` with dims (group_a, group_b); coords ``group_a``, ``group_b`` and ``n_filters_a/_b``,
        ``n_models_a/_b``, ``small_a/_b``; attrs ``metric``, ``weights``, units of the metric and
        ``n_filters_dropped``, ``n_models_dropped``, ``missing_labels`` of ``dist``. The diagonal is 0
        (NaN for empty groups).

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a result of :func:`distributions` or ``metric`` is unknown.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> dist = filtershift.distributions(ds, by="task")
    >>> d = filtershift.drift(dist, metric="kl_sym")
    >>> d.dims
    ('group_a', 'group_b')
    """
    _check_dist(dist)
    declared(metric)
    p = normalised_for(dist, dist["counts"].values, metric)
    widths = np.diff(dist["bin_edges"].values)
    values = pairwise(p, dist["explained_variance_ratio"].values, metric, widths)
    return _labelled(dist, values, metric)


def drift_components(dist: xr.Dataset, metric: str = "kl_sym") -> xr.DataArray:
    """Each drift value split over the components: (group_a, group_b, component), summing to :func:`drift`.

    The term of component k is its explained-variance-ratio weight times the metric between the two groups'
    histograms of coefficient k, so a reader sees which eigenfilter moved.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric (see :func:`drift`).

    Returns
    -------
    xarray.DataArray
        ``contribution`` with dims (group_a, group_b, component) and the coordinates of :func:`drift`.

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a result of :func:`distributions` or ``metric`` is unknown.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> dist = filtershift.distributions(ds, by="task")
    >>> parts = filtershift.drift_components(dist)
    >>> bool(abs(parts.sum("component") - filtershift.drift(dist)).max() < 1e-9)
    True
    """
    _check_dist(dist)
    m = declared(metric)
    p = normalised_for(dist, dist["counts"].values, metric)
    terms = m.divergence(p, np.diff(dist["bin_edges"].values)) * dist["explained_variance_ratio"].values
    out = xr.DataArray(terms, dims=("group_a", "group_b", "component"),
                       coords={**_pair_coords(dist), "component": dist["component"].values}, name="contribution")
    out.attrs.update({"metric": metric, "by": dist.attrs.get("by")})
    return describe(out, f"{m.long_name} per component", m.units,
                    f"explained-variance-weighted {m.long_name} of each component's coefficient histograms; the "
                    "components sum to the drift")


def top_bins(dist: xr.Dataset, group_a, group_b, metric: str = "kl_sym", top: int = 5):
    """The bins that contribute most to the drift between two groups, as a table.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions`.
    group_a, group_b : label
        Two labels of ``dist["group"]``.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric (see :func:`drift`); every declared metric with a per-bin split.
    top : int, default 5
        Rows to return, an integer >= 1.

    Returns
    -------
    pandas.DataFrame
        One row per (component, bin), largest ``contribution`` first: ``component``, ``bin``, ``lo``, ``hi`` (the
        bin's edges in coefficient units), ``p_a``, ``p_b`` (the two histograms' shares), ``contribution``
        (weighted, in the metric's units) and ``share`` (of the pair's drift).

    Raises
    ------
    filtershift.errors.InputError
        If a label is not a group, ``top`` < 1, or the metric has no per-bin split.
    """
    import pandas as pd

    _check_dist(dist)
    m = declared(metric)
    if m.per_bin is None:
        raise InputError(f"metric {metric!r} declares no per-bin split; choose one of kl_sym, js, w1.")
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be an integer >= 1; got {top!r}.")
    labels = [str(g) for g in dist["group"].values]
    missing = [str(g) for g in (group_a, group_b) if str(g) not in labels]
    if missing:
        raise InputError(f"no group(s) {missing}; the groups are {labels}.")
    a, b = labels.index(str(group_a)), labels.index(str(group_b))
    p = normalised_for(dist, dist["counts"].values[[a, b]], metric)
    edges = dist["bin_edges"].values
    terms = m.per_bin(p[0], p[1], np.diff(edges)) * dist["explained_variance_ratio"].values[:, None]
    total = terms.sum()
    order = np.argsort(terms, axis=None)[::-1][:top]
    comp, bins = np.unravel_index(order, terms.shape)
    return pd.DataFrame({"component": comp, "bin": bins, "lo": edges[bins], "hi": edges[bins + 1],
                         "p_a": p[0][comp, bins], "p_b": p[1][comp, bins], "contribution": terms[comp, bins],
                         "share": terms[comp, bins] / total if total > 0 else np.nan})


#: Interval methods of :func:`drift_ci`, with the sentence that names them in captions and results.
INTERVALS = {
    "basic": "basic bootstrap interval over models within each group (2 x estimate - quantiles, clipped at 0); "
             "none for a pair with a one-model group",
    "percentile": "percentile bootstrap interval over models within each group; none for a pair with a one-model "
                  "group",
}


def drift_ci(dist: xr.Dataset, metric: str = "kl_sym", n_boot: int = 200, seed: int = 0,
             level: float = 0.95, method: str = "basic") -> xr.Dataset:
    """Bootstrap intervals for every drift value.

    Each replicate resamples, within each group, the group's models with replacement and sums their per-model
    histograms (no pass over the data). The result holds ``drift`` (the point estimate), ``lower``, ``upper`` and
    ``std`` (group_a, group_b). A pair with a group of one model has no interval (NaN): one model cannot be
    resampled, so its side would add no variability and the interval would look narrower than it is. A
    random-initialisation reference (:func:`~filtershift.stats.init_reference.init_reference`, pseudo-models
    with negative ids) is a fixed distribution: its pairs get the interval of resampling the other group. With
    overlapping groups (``NAME:each``) a model in two groups is resampled in each of them on its own.

    The default is the *basic* bootstrap interval ``[2 d - q(1 - a/2), 2 d - q(a/2)]`` of the point estimate ``d``
    and the replicates' quantiles ``q``, clipped at 0: a divergence of finite samples is biased upwards, so its
    replicates sit above ``d`` and the plain percentile interval ``[q(a/2), q(1 - a/2)]`` (``method="percentile"``)
    sits above the estimate too; the basic interval reflects that bias around ``d``.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        Divergence per component, summed with the explained-variance-ratio weights: symmetric Kullback-Leibler
        (the reference), Jensen-Shannon (natural log) or Wasserstein-1 (see :mod:`filtershift.metrics`).
    n_boot : int, default 200
        Number of bootstrap replicates, an integer >= 2.
    seed : int, default 0
        Seed of the random generator (the same seed gives the same intervals).
    level : float, default 0.95
        Confidence level of the interval, in (0, 1).
    method : {"basic", "percentile"}, default "basic"
        The interval from the replicates (see above).

    Returns
    -------
    xarray.Dataset
        ``drift``, ``lower``, ``upper``, ``std`` with dims (group_a, group_b) and the coordinates of
        :func:`drift`; attrs ``metric``, ``n_boot``, ``seed``, ``level``, ``method`` (a sentence naming the
        interval).

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a result of :func:`distributions`, ``metric`` or ``method`` is unknown, ``n_boot`` < 2
        or ``level`` is not in (0, 1).
    """
    _check_dist(dist)
    declared(metric)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise InputError(f"n_boot must be an integer >= 2; got {n_boot!r}.")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1); got {level!r}.")
    if method not in INTERVALS:
        raise InputError(f"unknown interval method {method!r}; choose one of {', '.join(INTERVALS)}.")
    rng = np.random.default_rng(seed)
    groups = dist.sizes["group"]
    member_group = dist["member_group"].values
    member_counts = dist["member_counts"].values.astype(np.float64)
    shape = member_counts.shape[1:]
    counts = np.zeros((n_boot, groups) + shape)
    for g in range(groups):
        idx = np.flatnonzero(member_group == g)
        if len(idx) == 0:
            continue
        draws = rng.integers(0, len(idx), size=(n_boot, len(idx)))
        mult = np.zeros((n_boot, len(idx)))
        np.add.at(mult, (np.arange(n_boot)[:, None], draws), 1.0)
        counts[:, g] = (mult @ member_counts[idx].reshape(len(idx), -1)).reshape((n_boot,) + shape)
    p = normalised_for(dist, counts, metric)
    widths = np.diff(dist["bin_edges"].values)
    boots = pairwise(p, dist["explained_variance_ratio"].values, metric, widths)
    point = drift(dist, metric)
    alpha = (1 - level) / 2
    q_lo, q_hi = np.quantile(boots, [alpha, 1 - alpha], axis=0)
    if method == "basic":
        d = point.values
        lower, upper = np.maximum(2 * d - q_hi, 0.0), np.maximum(2 * d - q_lo, 0.0)
    else:
        lower, upper = q_lo, q_hi
    std = boots.std(axis=0, ddof=1)
    real = dist["member_model"].values >= 0
    one = np.bincount(member_group[real], minlength=groups) == 1
    alone = one[:, None] | one[None, :]
    lower, upper, std = (np.where(alone, np.nan, v) for v in (lower, upper, std))
    out = xr.Dataset({"drift": point, "lower": _labelled(dist, lower, metric, "lower"),
                      "upper": _labelled(dist, upper, metric, "upper"),
                      "std": _labelled(dist, std, metric, "std")})
    out.attrs.update({"metric": metric, "n_boot": int(n_boot), "seed": seed, "level": float(level),
                      "method": INTERVALS[method]})
    return describe(out, f"{declared(metric).long_name} with bootstrap intervals", declared(metric).units,
                    f"drift and its {level:.0%} {INTERVALS[method]}, {n_boot} replicates")
