"""Does a layer quality metric go with a covariate? Spearman's rank correlation over layers, with a bootstrap
interval over models.

The layers of one model are not independent draws (they share a training run), so the interval resamples whole
models with replacement, taking all their layers (a cluster bootstrap), and reads the percentile interval of the
replicates. A covariate is any numeric column of the quality table (``conv_depth_norm``, ``n``, ``in_channels``,
...) or of the models table (``total_filters``, ``depth``, ...; every layer of a model gets its model's value).
Layers where the metric or the covariate is missing or not finite are left out and counted. No pass over the data
beyond :func:`~filtershift.stats.quality.layer_quality`'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats._attrs import describe
from filtershift.stats.quality import METRICS, layer_quality
from filtershift.store.dataset import models as models_of


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (NaN when either side is constant)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _column(table: pd.DataFrame, mods: pd.DataFrame, name: str, role: str) -> np.ndarray:
    if name in table.columns:
        values = table[name]
    elif name in mods.columns:
        values = table["model_id"].map(mods.set_index("model_id")[name])
    else:
        numeric = sorted({c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])}
                         | {c for c in mods.columns if pd.api.types.is_numeric_dtype(mods[c])} - {"model_id"})
        raise InputError(f"{role} {name!r} is not a column of the quality or models table; numeric choices: "
                         f"{numeric}.")
    if not (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)):
        raise InputError(f"{role} {name!r} is not numeric (a label column groups, see --by); choose a numeric "
                         "column.")
    return pd.to_numeric(values, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def correlate(ds: xr.Dataset, metric: str = "variance_entropy_norm", covariate: str = "total_filters", *,
              n_boot: int = 1000, seed: int = 0, level: float = 0.95, quality: pd.DataFrame | None = None,
              sparsity_eps: float = 0.01) -> xr.Dataset:
    """Rank-correlate a layer quality metric with a covariate: Spearman's rho and a bootstrap interval over models.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset or a selection of one.
    metric : str, default "variance_entropy_norm"
        A column of :func:`~filtershift.stats.quality.layer_quality` (one of ``METRICS`` or ``degeneration``).
    covariate : str, default "total_filters"
        A numeric column of the quality table or of the models table.
    n_boot : int, default 1000
        Bootstrap replicates (models resampled with replacement), an integer >= 2.
    seed : int, default 0
        Seed of the resampling.
    level : float, default 0.95
        Confidence level of the percentile interval, in (0, 1).
    quality : pandas.DataFrame, optional
        A quality table of ``ds`` already computed (saves its passes).
    sparsity_eps : float, default 0.01
        Sparsity eps of the quality table (when it is computed here).

    Returns
    -------
    xarray.Dataset
        Scalars ``rho``, ``lower``, ``upper``; ``n_layers`` and ``n_models`` used, ``n_left_out`` (layers without
        a finite metric or covariate); and, on a ``layer`` dimension, the ``metric_values`` and
        ``covariate_values`` used with their ``model_id`` (for a figure). Attrs ``metric``, ``covariate``,
        ``n_boot``, ``seed``, ``level``, ``method``.

    Raises
    ------
    filtershift.errors.InputError
        If the metric or covariate is unknown or not numeric, fewer than 3 layers of 2 models remain, ``n_boot`` <
        2 or ``level`` is not in (0, 1).

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> r = filtershift.correlate(ds, "variance_entropy_norm", "total_filters")
    >>> float(r["lower"]) <= float(r["rho"]) <= float(r["upper"])
    True
    """
    choices = [*METRICS, "degeneration"]
    if metric not in choices:
        raise InputError(f"metric {metric!r} is not a quality metric; choose one of {choices}.")
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 2:
        raise InputError(f"n_boot must be an integer >= 2; got {n_boot!r}.")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1); got {level!r}.")
    table = layer_quality(ds, sparsity_eps, orthogonality=metric == "orthogonality") if quality is None else quality
    mods = models_of(ds)
    y = _column(table, mods, metric, "metric")
    x = _column(table, mods, covariate, "covariate")
    model = table["model_id"].to_numpy(np.int64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, model = x[ok], y[ok], model[ok]
    ids, codes = np.unique(model, return_inverse=True)
    if ok.sum() < 3 or len(ids) < 2:
        raise InputError(f"correlate needs at least 3 layers of 2 models with a finite {metric} and {covariate}; "
                         f"{int(ok.sum())} layers of {len(ids)} models have both.")
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(codes == m) for m in range(len(ids))]
    boots = np.empty(n_boot)
    for i in range(n_boot):
        take = np.concatenate([members[m] for m in rng.integers(0, len(ids), len(ids))])
        boots[i] = spearman(x[take], y[take])
    alpha = (1 - level) / 2
    lower, upper = np.nanquantile(boots, [alpha, 1 - alpha])
    out = xr.Dataset({
        "rho": describe(xr.DataArray(rho), "Spearman's rho", "1", f"rank correlation of {metric} with {covariate} "
                        "over layers"),
        "lower": describe(xr.DataArray(lower), "lower bound", "1", f"{level:.0%} percentile bootstrap interval, "
                          "models resampled"),
        "upper": describe(xr.DataArray(upper), "upper bound", "1", f"{level:.0%} percentile bootstrap interval, "
                          "models resampled"),
        "n_layers": describe(xr.DataArray(int(ok.sum())), "layers", "1", "layers with both values finite"),
        "n_models": describe(xr.DataArray(len(ids)), "models", "1", "models of those layers"),
        "n_left_out": describe(xr.DataArray(int((~ok).sum())), "layers left out", "1",
                               f"layers without a finite {metric} or {covariate}"),
        "metric_values": describe(xr.DataArray(y, dims="layer"), metric, "1", f"{metric} of each layer used"),
        "covariate_values": describe(xr.DataArray(x, dims="layer"), covariate, "1",
                                     f"{covariate} of each layer used"),
    }, coords={"model_id": ("layer", model)})
    out.attrs.update({"metric": metric, "covariate": covariate, "n_boot": int(n_boot), "seed": seed,
                      "level": float(level), "method": "Spearman over layers; percentile bootstrap over models"})
    return describe(out, f"correlation of {metric} with {covariate}", "1",
                    f"Spearman's rho over {int(ok.sum())} layers of {len(ids)} models with a {level:.0%} interval "
                    f"from {n_boot} model resamples")
