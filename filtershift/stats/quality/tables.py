"""The quality tables: one row per layer (:func:`layer_quality`) or per model (:func:`model_quality`), the most
degenerated rows, and summaries per group (:func:`quality_by`)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats._attrs import ATTRS, describe_vars
from filtershift.stats.cache import as_stats
from filtershift.stats.grouping import DEPTH_LABELS, depth_codes, grouping_names
from filtershift.stats.quality.formulas import METRICS, finalize
from filtershift.stats.quality.layer import check_eps
from filtershift.stats.quality.orthogonality_pass import orthogonality_values
from filtershift.stats.quality.thresholds import as_thresholds, degeneration


def _labels(m: xr.Dataset) -> dict:
    cols = {}
    for name in grouping_names(m):
        if name in m:
            labels = np.asarray(m[name].attrs["labels"], dtype=object)
            codes = m[name].values.astype(np.int64)
            cols[name] = pd.Categorical.from_codes(np.where(codes < len(labels), codes, -1),
                                                   categories=list(labels))
    return cols


def layer_quality(data, sparsity_eps: float = 0.01, *, thresholds=None, orthogonality: bool = True,
                  convention: str = "notebook") -> pd.DataFrame:
    """One row per record (model x conv depth, or one layer) with every metric and the degeneration flags.

    ``data`` is a Dataset or a :class:`~filtershift.stats.RecordStats` (pass the one of a shift analysis to
    share its passes 1 and 2). Columns: record, model_id, conv_depth, conv_depth_norm, depth (decile), layer,
    in/out channels, groups, the grouping labels (task, visual_category, ...), n, n_nonsparse, max_abs, the
    :data:`METRICS`, and the columns of :func:`degeneration`. ``orthogonality=False`` skips its pass (NaN).

    Parameters
    ----------
    data : xarray.Dataset or RecordStats
        A filtershift Dataset or its per-record statistics.
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|; in (0, 1).
    thresholds : Thresholds or dict, optional
        Degeneration criteria (:class:`~filtershift.stats.quality.Thresholds` or a dict of its fields); default
        ``Thresholds()``.
    orthogonality : bool, default True
        Compute the orthogonality metric (one more pass over whole layers); False leaves it NaN.
    convention : {"notebook", "torchconvquality"}, default "notebook"
        Whose values where the references differ: a layer of zeros (sparsity 0 or 1) and filters of zero variance
        (entropy NaN or 0); :data:`~filtershift.stats.quality.formulas.CONVENTIONS`.

    Returns
    -------
    pandas.DataFrame
        One row per record; columns ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm``, ``depth``,
        ``layer``, ``in_channels``, ``out_channels``, ``groups``, the grouping labels, ``max_abs``, ``n``,
        ``n_nonsparse``, the metrics, ``sparse``, ``low_diversity``, ``random_like``, ``degenerated`` and
        ``degeneration``; ``attrs`` hold ``sparsity_eps`` and ``thresholds``.

    Raises
    ------
    filtershift.errors.InputError
        If ``sparsity_eps`` is not in (0, 1), ``thresholds`` or ``convention`` is invalid, or ``data`` is not a
        filtershift Dataset or RecordStats.
    """
    from filtershift.store.dataset import records as records_table

    eps = check_eps(sparsity_eps)
    t = as_thresholds(thresholds)
    stats = as_stats(data)
    m = stats.moments()
    s = stats.sparsity(eps)
    rec_ids = m["record"].values
    res = finalize(m["n"].values, m["raw_sum"].values, m["raw_comoment"].values, m["raw_l1_sum"].values,
                   m["raw_l2_sum"].values, s["sparse_count"].values, s["nonsparse_n"].values,
                   s["nonsparse_comoment"].values, convention=convention)
    recs = records_table(stats.ds).set_index("record").reindex(rec_ids)
    table = pd.DataFrame({
        "record": rec_ids.astype(np.int64),
        "model_id": m["model_id"].values.astype(np.int64),
        "conv_depth": m["conv_depth"].values.astype(np.int64),
        "conv_depth_norm": m["conv_depth_norm"].values.astype(np.float64),
        "depth": pd.Categorical.from_codes(depth_codes(m["conv_depth_norm"].values),
                                           categories=DEPTH_LABELS),
        "layer": recs["layer"].fillna("").astype(str).to_numpy(),
        "in_channels": recs["in_channels"].astype("Int64").array,
        "out_channels": recs["out_channels"].astype("Int64").array,
        "groups": recs["groups"].astype("Int64").array,
    })
    for name, values in _labels(m).items():
        table[name] = values
    table["max_abs"] = m["raw_absmax"].values.astype(np.float64)
    for k in ("n", "n_nonsparse"):
        table[k] = res[k]
    for k in METRICS:
        table[k] = np.nan if k == "orthogonality" else res[k]
    if orthogonality:
        table["orthogonality"] = orthogonality_values(stats, rec_ids)
    table = degeneration(table, t)
    table.attrs.update({"sparsity_eps": eps, "thresholds": asdict(t), "convention": convention})
    return table


def _weighted_mean(values: pd.Series, weights: pd.Series) -> float:
    v = values.to_numpy(np.float64)
    w = weights.to_numpy(np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")


#: long_name, units, description of the variables of :func:`quality_by` besides ``n_filters`` (in
#: :data:`filtershift.stats._attrs.ATTRS`).
QUALITY_BY_ATTRS = {
    "n_rows": ("rows", "1", "layers (or models) in the group"),
    "degenerated_share": ("degenerated share", "1", "share of the group's rows flagged degenerated"),
    "mean": ("mean", "see metric_units", "filter-weighted mean of each metric"),
    "quantiles": ("quantiles", "see metric_units", "quantiles of each metric over the group's rows"),
    "hist": ("rows per bin", "1", "histogram of each metric over the group's rows"),
}
_META = ("record", "conv_depth", "conv_depth_norm", "depth", "layer", "in_channels", "out_channels", "groups")


def model_quality(data, sparsity_eps: float = 0.01, *, thresholds=None, orthogonality: bool = True,
                  convention: str = "notebook") -> pd.DataFrame:
    """One row per model: its layers' metrics averaged with their filter counts as weights.

    Each row also holds the number of layers and filters, and the share of degenerated layers
    (``degenerated_share``) and of filters in them (``degenerated_filter_share``). ``data`` is a table from
    :func:`layer_quality` or anything :func:`layer_quality` accepts (then computed with the other arguments).

    Parameters
    ----------
    data : pandas.DataFrame, xarray.Dataset or RecordStats
        A :func:`layer_quality` table, or the input of :func:`layer_quality`.
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|; in (0, 1).
        Used only when the layer table is computed here.
    thresholds : Thresholds or dict, optional
        Degeneration criteria (:class:`~filtershift.stats.quality.Thresholds` or a dict of its fields); default
        ``Thresholds()``.
        Used only when the layer table is computed here.
    orthogonality : bool, default True
        Compute the orthogonality metric (one more pass over whole layers); False leaves it NaN.
        Used only when the layer table is computed here.
    convention : {"notebook", "torchconvquality"}, default "notebook"
        As for :func:`layer_quality`; used only when the layer table is computed here.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``model_id``, the grouping labels, ``n_layers``, ``n_filters``, the filter-weighted
        mean of each metric and of ``degeneration``, ``n_degenerated``, ``degenerated_share``,
        ``degenerated_filter_share``; ``attrs`` copied from the layer table.

    Raises
    ------
    filtershift.errors.InputError
        If a given table lacks the columns of a :func:`layer_quality` table, or as :func:`layer_quality`.
    """
    table = data if isinstance(data, pd.DataFrame) else layer_quality(
        data, sparsity_eps, thresholds=thresholds, orthogonality=orthogonality, convention=convention)
    need = {"model_id", "n", "degenerated", *METRICS}
    missing = need - set(table.columns)
    if missing:
        raise InputError(f"model_quality: the table lacks column(s) {sorted(missing)}; pass a layer_quality table.")
    labels = [c for c in table.columns if isinstance(table[c].dtype, pd.CategoricalDtype) and c not in _META]
    ids, model = np.unique(table["model_id"].to_numpy(), return_inverse=True)
    n_models = len(ids)
    first = np.full(n_models, len(table))
    np.minimum.at(first, model, np.arange(len(table)))

    def total(values) -> np.ndarray:
        return np.bincount(model, np.asarray(values, np.float64), minlength=n_models)

    n = table["n"].to_numpy(np.float64)
    degenerated = table["degenerated"].to_numpy(bool)
    out = pd.DataFrame({"model_id": ids})
    for c in labels:
        out[c] = table[c].to_numpy()[first]
    out["n_layers"] = np.bincount(model, minlength=n_models)
    out["n_filters"] = total(n).astype(np.int64)
    for k in METRICS + ("degeneration",):
        if k in table:
            # the filter-weighted mean over the layers where the metric is finite and the weight positive
            v = table[k].to_numpy(np.float64)
            ok = np.isfinite(v) & (n > 0)
            weight = total(np.where(ok, n, 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k] = np.where(weight > 0, total(np.where(ok, v * n, 0.0)) / weight, np.nan)
    out["n_degenerated"] = total(degenerated).astype(np.int64)
    out["degenerated_share"] = out["n_degenerated"] / out["n_layers"]
    out["degenerated_filter_share"] = total(np.where(degenerated, n, 0.0)) / np.maximum(out["n_filters"], 1)
    for c in labels:
        out[c] = pd.Categorical(out[c], categories=table[c].cat.categories)
    out.attrs.update(table.attrs)
    return out


def most_degenerated(table: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The ``k`` most degenerated rows of a layer or model table.

    Layers are ranked by their ``degeneration`` score, models by ``degenerated_share``, then
    ``degenerated_filter_share``, then their mean score.

    Parameters
    ----------
    table : pandas.DataFrame
        A table from :func:`layer_quality` or :func:`model_quality`.
    k : int, default 10
        Number of rows returned, a positive integer.

    Returns
    -------
    pandas.DataFrame
        The ``k`` first rows of ``table`` in that order (NaN scores last), with all its columns.

    Raises
    ------
    filtershift.errors.InputError
        If ``k`` is not a positive integer.
    """
    try:
        k = int(k)
    except (TypeError, ValueError):
        k = -1
    if k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}.")
    keys = ["degenerated_share", "degenerated_filter_share", "degeneration"]
    if "degenerated_share" not in table:
        keys = ["degeneration"]
    return table.sort_values(keys, ascending=False, na_position="last", kind="stable").head(k)


def quality_by(table: pd.DataFrame, by, metrics=METRICS, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
               bins: int = 20) -> xr.Dataset:
    """Per group of a layer (or model) table: counts, metric means, distributions and the degenerated share.

    For each group: counts, filter-weighted mean of each metric, the distribution over layers (quantiles and a
    histogram on each metric's range over the whole table) and the degenerated share. ``by``: a column of the
    table ('task', 'visual_category', 'depth', 'model_id', 'conv_depth', ...; the original meta column names such
    as 'Visual Category' also work) or a list of them.

    Parameters
    ----------
    table : pandas.DataFrame
        A table from :func:`layer_quality` or :func:`model_quality`.
    by : str or list of str
        Column or columns to group by.
    metrics : sequence of str, default METRICS
        Metric columns summarised (those absent from the table are left out).
    quantiles : sequence of float, default (0.05, 0.25, 0.5, 0.75, 0.95)
        Quantile levels computed over each group's rows.
    bins : int, default 20
        Number of histogram bins per metric, a positive integer.

    Returns
    -------
    xarray.Dataset
        Dims (group, metric, quantile, bin, bin_edge): ``n_rows``, ``n_filters``, ``degenerated_share`` (group),
        ``mean`` (group, metric), ``quantiles`` (group, metric, quantile), ``hist`` (group, metric, bin); coords
        ``group`` (labels joined by " / "), ``metric``, ``quantile``, ``bin_edges`` (metric, bin_edge),
        ``metric_units`` (metric) and one coordinate per ``by`` column along ``group``.

    Raises
    ------
    filtershift.errors.InputError
        If a ``by`` column is missing or ``bins`` is not a positive integer.
    """
    from filtershift.store.format import snake_case

    keys = [by] if isinstance(by, str) else list(by)
    cols = []
    for key in keys:
        col = key if key in table.columns else snake_case(key)
        if col not in table.columns:
            choices = [c for c in table.columns if isinstance(table[c].dtype, pd.CategoricalDtype)]
            raise InputError(f"quality_by: no column {key!r}; group by one of {choices + ['model_id', 'conv_depth']}.")
        cols.append(col)
    metrics = [m for m in metrics if m in table.columns]
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise InputError(f"bins must be a positive integer; got {bins!r}.")
    weight = table["n_filters"] if "n_filters" in table else table["n"]
    groups = list(table.assign(_w=weight).groupby(cols, observed=True, sort=True))
    gkeys = [k if isinstance(k, tuple) else (k,) for k, _ in groups]
    labels = [" / ".join(str(v) for v in k) for k in gkeys]
    q = np.asarray(quantiles, np.float64)
    edges = np.zeros((len(metrics), bins + 1))
    for i, name in enumerate(metrics):
        v = table[name].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        edges[i] = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    g_n = len(labels)
    mean = np.full((g_n, len(metrics)), np.nan)
    quant = np.full((g_n, len(metrics), len(q)), np.nan)
    hist = np.zeros((g_n, len(metrics), bins), np.int64)
    n_rows, n_filters, degen = np.zeros(g_n, np.int64), np.zeros(g_n, np.int64), np.full(g_n, np.nan)
    for gi, (_, g) in enumerate(groups):
        n_rows[gi], n_filters[gi] = len(g), int(g["_w"].sum())
        if "degenerated" in g:
            degen[gi] = float(g["degenerated"].mean())
        for i, name in enumerate(metrics):
            mean[gi, i] = _weighted_mean(g[name], g["_w"])
            v = g[name].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                quant[gi, i] = np.quantile(v, q)
                hist[gi, i] = np.histogram(v, bins=edges[i])[0]
    out = xr.Dataset(
        {"n_rows": ("group", n_rows), "n_filters": ("group", n_filters), "degenerated_share": ("group", degen),
         "mean": (("group", "metric"), mean), "quantiles": (("group", "metric", "quantile"), quant),
         "hist": (("group", "metric", "bin"), hist)},
        coords={"group": labels, "metric": list(metrics), "quantile": q,
                "bin_edges": (("metric", "bin_edge"), edges)})
    for j, col in enumerate(cols):
        out = out.assign_coords({col: ("group", [k[j] for k in gkeys])})
    out.attrs.update({"by": cols, "mean": "weighted by filter count",
                      "quantiles": "over the rows (layers or models) of each group, NaN values left out",
                      "long_name": "quality per group", "units": "1",
                      "description": f"quality metrics of the {'layers' if 'n' in table else 'models'} per "
                                     f"{' x '.join(cols)} group"})
    describe_vars(out, {**QUALITY_BY_ATTRS, "n_filters": ATTRS["n_filters"]})
    units = ["weight units" if "norm" in m and "entropy" not in m else "1" for m in metrics]
    return out.assign_coords(metric_units=("metric", units))
