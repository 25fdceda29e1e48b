"""Place a user's model against the database: drift to every group and model, and layer quality percentiles.

The model's filters are projected on the database's basis and binned over the database's coefficient range, so
its histograms are directly comparable with the database's groups (the drift definitions of
:mod:`filtershift.stats`). Coefficients outside the database range cannot be binned comparably; their share is
reported as ``outside_range`` (a large share is itself a sign that the model is unlike the database).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.metrics import metric as declared

#: Layer quality metrics placed against the database's distribution of the same metric over its records.
QUALITY = ("sparsity", "variance_entropy_norm", "variance_entropy_clean_norm", "orthogonality")
#: What a record is (docs/quality.md, "Records and layers"): one layer (it has a layer name: extracted models,
#: per-layer meta tables) or one model x conv depth with its parallel branches pooled (CNN-Filter-DB v1.0).
DEFINITIONS = {"layer": "layer records (one per convolution)",
               "depth": "model x conv depth records (parallel branches pooled, as CNN-Filter-DB)"}


def record_definition(table: pd.DataFrame) -> np.ndarray:
    """``"layer"`` or ``"depth"`` per row of a records or quality table (a layer name makes a layer record)."""
    names = table["layer"] if "layer" in table else pd.Series("", index=table.index)
    return np.where(names.fillna("").astype(str).to_numpy() != "", "layer", "depth")


def percentile_of(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Percentile rank (0-100, ties counted half) of each value among the finite reference values."""
    ref = np.sort(reference[np.isfinite(reference)])
    if ref.size == 0:
        return np.full(len(values), np.nan)
    below = np.searchsorted(ref, values, side="left")
    upto = np.searchsorted(ref, values, side="right")
    out = 100.0 * (below + upto) / (2 * ref.size)
    return np.where(np.isfinite(values), out, np.nan)


def model_dataset(model) -> xr.Dataset:
    """The in-memory Dataset of one extracted model (``ModelFilters``), one record per layer."""
    from filtershift.store.dataset import from_arrays

    if not model.layers:
        raise InputError(f"{model.source}: the model has no 3x3 convolutions; nothing to compare.")
    records = pd.DataFrame([{"model_id": -1, "conv_depth": layer.conv_depth,
                             "conv_depth_norm": layer.conv_depth_norm, "layer": layer.name,
                             "in_channels": layer.in_channels, "out_channels": layer.out_channels,
                             "groups": layer.groups, "n": layer.weights.shape[0]} for layer in model.layers])
    models = pd.DataFrame({"model_id": [-1], "model": [str(model.source)], "Task": ["(this model)"]})
    return from_arrays(model.filters(), records, models)


def depth_dataset(model) -> xr.Dataset:
    """The same model as CNN-Filter-DB records: one per conv depth, its parallel branches' filters pooled."""
    from filtershift.store.dataset import from_arrays

    layers = sorted(model.layers, key=lambda layer: layer.conv_depth)
    depths = list(dict.fromkeys(layer.conv_depth for layer in layers))
    records = pd.DataFrame([{"model_id": -1, "conv_depth": d,
                             "conv_depth_norm": next(x.conv_depth_norm for x in layers if x.conv_depth == d),
                             "n": sum(x.weights.shape[0] for x in layers if x.conv_depth == d)} for d in depths])
    models = pd.DataFrame({"model_id": [-1], "model": [str(model.source)], "Task": ["(this model)"]})
    return from_arrays(np.concatenate([x.weights for x in layers]), records, models)


def compare(model, store, *, by=("task",), metric: str = "kl_sym", bins: int = 70, top: int = 10,
            min_filters: int = 1000, min_models: int = 2, storage_options: dict | None = None) -> xr.Dataset:
    """Drift of one model to each group of a store and to every database model, with layer quality percentiles.

    The drift of ``model`` (a path, module or ``ModelFilters``) to each group of ``store`` is computed for every
    grouping in ``by`` and to every database model; the result is a labelled Dataset (see the variables'
    descriptions). ``storage_options``: fsspec options of a store URL. The model's coefficients are binned over the
    database's coefficient range; the share outside it is ``attrs["outside_range"]``.

    Parameters
    ----------
    model : str, os.PathLike, torch.nn.Module or ModelFilters
        The model: a file path (.onnx, .pt/.pth/.bin/.ckpt state_dict, .safetensors), a ``torch.nn.Module``, or
        filters already read by :func:`~filtershift.read_model`.
    store : str, os.PathLike or xarray.Dataset
        The database: a store path or URL, or a Dataset opened with :func:`~filtershift.open_store`.
    by : str or sequence of str, default ("task",)
        The groupings to compare with, each a grouping key as in :func:`~filtershift.distributions`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric (see :mod:`filtershift.metrics`).
    bins : int, default 70
        Histogram bins per component.
    top : int, default 10
        Number of nearest database models listed.
    min_filters : int, default 1000
        Database groups with fewer filters are flagged ``small``.
    min_models : int, default 2
        Database groups with fewer models are flagged ``small``.
    storage_options : dict, optional
        fsspec options of a store URL (credentials, endpoint).

    Returns
    -------
    xarray.Dataset
        For each grouping NAME in ``by`` and for ``model``: ``drift_NAME`` (dim ``NAME_group``; coords
        ``NAME_n_filters``, ``NAME_n_models``, ``NAME_small``). ``nearest_model_id``, ``nearest_drift`` and
        ``nearest_name`` (dim ``nearest``, at most ``top``, nearest first). Per layer of the model (dim ``layer``):
        ``layer_n``, ``layer_degenerated``, and for sparsity, variance_entropy_norm, variance_entropy_clean_norm
        and orthogonality ``layer_METRIC`` and ``layer_METRIC_percentile`` (percentile among the database's
        layer records, or among its model x conv depth records when it has no layer record: ``layer_reference``).
        Where the database holds model x conv depth records, the model's conv depths with their parallel
        branches pooled (dim ``depth``): ``depth_n``, ``depth_METRIC``, ``depth_METRIC_percentile`` among those
        records (like with like). attrs ``model``, ``model_sha256``, ``metric``, ``bins``, ``n_filters``,
        ``n_layers``, ``outside_range``, ``range``, ``store``, ``layer_reference`` (``"layer"`` or ``"depth"``),
        ``definitions_mixed`` (layers ranked among depth records of a model with parallel branches),
        ``n_layer_records``, ``n_depth_records``.

    Raises
    ------
    filtershift.errors.InputError
        If the metric is unknown, the model cannot be read or has no 3x3 convolutions.
    filtershift.errors.StoreError
        If the store is missing, incomplete or unreadable.

    Examples
    --------
    >>> import filtershift
    >>> result = filtershift.compare("resnet18.onnx", "filters.zarr", by=["task", "visual_category"])
    >>> result["drift_task"].sortby(result["drift_task"])  # nearest task group first  # doctest: +SKIP
    >>> result.attrs["outside_range"]  # doctest: +SKIP
    """
    from filtershift.ingest import read_model
    from filtershift.ingest.model import ModelFilters
    from filtershift.stats import distributions, fit_basis, record_stats
    from filtershift.stats.divergence import normalised_for, pairwise
    from filtershift.store.dataset import models as models_table
    from filtershift.store.dataset import open_store

    declared(metric)
    m = model if isinstance(model, ModelFilters) else read_model(model)
    db = store if isinstance(store, xr.Dataset) else open_store(store, storage_options=storage_options)
    stats = record_stats(db)
    basis = fit_basis(stats)
    lo, hi = stats.coef_range(basis)
    mine = model_dataset(m)
    own = distributions(mine, basis, by="model_id", bins=bins, range=(lo, hi), min_filters=1, min_models=1)
    n_coef = int(own["n_filters"].values.sum()) * basis.components_.shape[0]
    outside = 1.0 - float(own["counts"].values.sum()) / max(n_coef, 1)
    edges = own["bin_edges"].values
    widths = np.diff(edges)
    weights = own["explained_variance_ratio"].values
    out = {}
    groupings = [by] if isinstance(by, str) else list(by)
    for key in [*groupings, "model"]:
        dist = distributions(stats, basis, by=key, bins=bins, min_filters=min_filters, min_models=min_models)
        counts = np.concatenate([own["counts"].values, dist["counts"].values])
        d = pairwise(normalised_for(own, counts, metric), weights, metric, widths=widths)[0, 1:]
        name = "model" if key == "model" else str(dist.attrs["by"][0] if len(dist.attrs["by"]) == 1 else key)
        dim = f"{name}_group"
        out[f"drift_{name}"] = xr.DataArray(d, dims=dim, coords={
            dim: dist["group"].values, f"{name}_n_filters": (dim, dist["n_filters"].values),
            f"{name}_n_models": (dim, dist["n_models"].values), f"{name}_small": (dim, dist["small"].values)},
            attrs={"description": f"{metric} drift of the model to each {name} group"})
    result = xr.Dataset(out)
    mods = models_table(db).set_index("model_id")
    nearest = result["drift_model"].sortby(result["drift_model"]).isel(model_group=slice(0, top))
    ids = nearest["model_group"].values.astype(np.int64)
    name_col = next((c for c in ("Name", "model") if c in mods.columns), None)
    result["nearest_model_id"] = ("nearest", ids)
    result["nearest_drift"] = ("nearest", nearest.values)
    if name_col:
        result["nearest_name"] = ("nearest", mods.reindex(ids)[name_col].astype(str).to_numpy(dtype=object))
    _layer_quality(result, m, mine, stats)
    result.attrs.update({"model": str(m.source), "model_sha256": m.sha256, "metric": metric, "bins": bins,
                         "n_filters": int(m.filters().shape[0]), "n_layers": len(m.layers),
                         "outside_range": outside, "range": [lo, hi], "store": db.attrs.get("store", "")})
    return _described(result, metric)


def _described(result: xr.Dataset, metric: str) -> xr.Dataset:
    """long_name, units and description on the result and each of its variables."""
    from filtershift.stats._attrs import describe

    m = declared(metric)
    describe(result, "model against the database", "1",
             f"{m.long_name} of the model to each group and to each database model, and its layers' quality")
    for name, var in result.data_vars.items():
        text = var.attrs.get("description", "")
        if name.startswith("drift_") or name == "nearest_drift":
            describe(var, m.long_name, m.units, text or f"{metric} drift to the nearest models")
        elif name.endswith("_percentile"):
            describe(var, f"{name[len('layer_'):-len('_percentile')]} percentile", "percent", text)
        elif name.startswith("layer_"):
            unit = "weight units" if "norm" in name and "entropy" not in name else "1"
            describe(var, name[len("layer_"):].replace("_", " "), unit, text or f"the layer's {name[len('layer_'):]}")
        else:
            describe(var, name.replace("_", " "), "1", text or name.replace("_", " "))
    return result


def _layer_quality(result: xr.Dataset, model, mine: xr.Dataset, stats) -> None:
    """Per-layer quality of the model and its percentile among the database's records of the same definition
    (passes shared); per conv depth, pooled as CNN-Filter-DB records, where the database holds such records."""
    from filtershift.stats import record_stats
    from filtershift.stats.quality import layer_quality

    own = layer_quality(record_stats(mine))
    db = layer_quality(stats, orthogonality=False)
    kind = record_definition(db)
    n_layer, n_depth = int((kind == "layer").sum()), int((kind == "depth").sum())
    reference = "layer" if n_layer else "depth"
    ref = db[kind == reference]
    branches = len({layer.conv_depth for layer in model.layers}) < len(model.layers)
    result.coords["layer"] = ("layer", own["layer"].astype(str).to_numpy(dtype=object))
    result["layer_n"] = ("layer", own["n"].to_numpy(np.int64))
    result["layer_degenerated"] = ("layer", own["degenerated"].to_numpy(bool))
    _ranked(result, "layer", own, ref, DEFINITIONS[reference])
    if n_depth:
        pooled = layer_quality(record_stats(depth_dataset(model)))
        result.coords["depth"] = ("depth", pooled["conv_depth"].to_numpy(np.int64))
        result["depth_n"] = ("depth", pooled["n"].to_numpy(np.int64))
        _ranked(result, "depth", pooled, db[kind == "depth"], DEFINITIONS["depth"])
    result.attrs.update({"layer_reference": reference, "definitions_mixed": bool(reference == "depth" and branches),
                         "n_layer_records": n_layer, "n_depth_records": n_depth})


def _ranked(result: xr.Dataset, dim: str, own: pd.DataFrame, ref: pd.DataFrame, what: str) -> None:
    """``DIM_METRIC`` and its percentile among ``ref``'s rows, for each metric of :data:`QUALITY`."""
    for metric in QUALITY:
        values = own[metric].to_numpy(np.float64)
        result[f"{dim}_{metric}"] = (dim, values)
        result[f"{dim}_{metric}_percentile"] = (dim, percentile_of(ref[metric].to_numpy(np.float64), values))
        result[f"{dim}_{metric}_percentile"].attrs["description"] = (
            f"percentile of the {dim}'s {metric} among the database's {what}")


def layer_table(result: xr.Dataset, dim: str = "layer") -> pd.DataFrame:
    """One row per layer of the model (``dim="depth"``: per conv depth, branches pooled; empty when the database
    holds no such records): its quality metrics and their database percentiles."""
    if dim not in result.coords:
        return pd.DataFrame()
    cols = {dim: result[dim].values, "n": result[f"{dim}_n"].values}
    if dim == "layer":
        cols["degenerated"] = result["layer_degenerated"].values
    for metric in QUALITY:
        cols[metric] = result[f"{dim}_{metric}"].values
        cols[f"{metric}_percentile"] = result[f"{dim}_{metric}_percentile"].values
    return pd.DataFrame(cols)


def reference_note(result: xr.Dataset) -> str:
    """Which database records the layer percentiles rank among, and whether definitions are mixed."""
    a = result.attrs
    note = (f"layer percentiles among the database's {DEFINITIONS[a['layer_reference']]}: "
            f"{a['n_' + a['layer_reference'] + '_records']:,} records")
    if a["definitions_mixed"]:
        note += ("; MIXED DEFINITIONS: the database has no layer records and this model has parallel branches "
                 "(see the per-depth rows, pooled like the database's records)")
    return note


def summary_table(result: xr.Dataset) -> pd.DataFrame:
    """One row per (grouping, group): drift and group sizes, nearest first."""
    rows = []
    for name in result.data_vars:
        if not name.startswith("drift_") or name == "drift_model":
            continue
        key = name[len("drift_"):]
        da = result[name]
        for i, label in enumerate(da[f"{key}_group"].values):
            rows.append({"grouping": key, "group": label, "drift": float(da.values[i]),
                         "n_filters": int(da[f"{key}_n_filters"].values[i]),
                         "n_models": int(da[f"{key}_n_models"].values[i]),
                         "small": bool(da[f"{key}_small"].values[i])})
    return pd.DataFrame(rows).sort_values(["grouping", "drift"]).reset_index(drop=True)


def _suffix(path: str) -> str:
    """The figure format named by the file's suffix (PNG without one, as matplotlib does)."""
    return PurePosixPath(path).suffix.lower().lstrip(".") or "png"


def figure_target(path, option: str = "--figure") -> str:
    """The checked figure location (a local path or a writable URL); its suffix must be a matplotlib format."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from filtershift import outputs

    checked = outputs.check(path, option)
    known = Figure().canvas.get_supported_filetypes()
    if _suffix(checked) not in known:
        raise InputError(f"{option} {path}: unknown figure format {_suffix(checked)!r}; use a name ending in "
                         f"{', '.join('.' + k for k in ('png', 'svg', 'pdf') if k in known)}.")
    if not outputs.is_url(checked) and not Path(checked).parent.exists():
        raise InputError(f"{option} {path}: folder {Path(checked).parent} does not exist; create it or choose "
                         "another path.")
    return checked


def plot(result: xr.Dataset, path, option: str = "--figure", storage_options: dict | None = None) -> None:
    """Bar chart of the model's drift to each group (small groups hatched) and to its nearest models, written to
    a local path or a URL (``s3://...``, with ``storage_options``) atomically; the format follows the suffix."""
    import io

    import matplotlib

    from filtershift import outputs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary_table(result)
    keys = list(dict.fromkeys(table["grouping"]))
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(4.5 * (len(keys) + 1), 4.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        t = table[table.grouping == key]
        bars = ax.barh(t["group"].astype(str), t["drift"], color="tab:blue")
        for bar, small in zip(bars, t["small"]):
            if small:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
        ax.invert_yaxis()
        ax.set_title(f"drift to each {key}")
        ax.set_xlabel(result.attrs["metric"])
    ax = axes[0][-1]
    labels = [f"{i}: {n}" for i, n in zip(result["nearest_model_id"].values,
                                          result.get("nearest_name", result["nearest_model_id"]).values)]
    ax.barh(labels, result["nearest_drift"].values, color="tab:green")
    ax.invert_yaxis()
    ax.set_title("nearest database models")
    ax.set_xlabel(result.attrs["metric"])
    fig.suptitle(f"{result.attrs['model']} ({result.attrs['n_filters']:,} 3x3 filters); hatched: small groups")
    fig.tight_layout()
    checked = figure_target(path, option)
    buf = io.BytesIO()
    fig.savefig(buf, format=_suffix(checked), dpi=110)
    plt.close(fig)
    outputs.write_bytes(checked, buf.getvalue(), option, storage_options)
