"""A store (or in-memory arrays) as a lazy, labelled ``xarray.Dataset``.

The ``filter`` dimension has no index (a pandas index of 1.4e9 rows would be built eagerly); every per-filter
coordinate is computed per block with ``np.repeat`` from the small records table, chunked exactly like
``weights``. Nothing of size N is computed on open.
"""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.highlevelgraph import HighLevelGraph
from dask.base import tokenize

from filtershift.errors import InputError, StoreError
from filtershift.store import format as fmt
from filtershift.store.chunks import ChunkReader
from filtershift.store.verify import check_tables

TABLES_ATTR = "_filtershift_tables"
#: The values of every per-record coordinate, one row per record (index: record id). Coordinates built from it
#: carry the attribute ``per_record="tables"``; statistics read their per-record values here instead of
#: reducing the per-filter arrays (a coordinate that keeps this attribute must keep its values).
RECORD_COORDS_ATTR = "_filtershift_record_coords"
PER_RECORD = "per_record"


def open_store(path_or_url, *, label_rules=None, **storage_options) -> xr.Dataset:
    """Open a complete store as a dask-backed Dataset; computes nothing of size N.

    ``label_rules`` replaces the store's label-cleaning rules (a list of ``{"column", "contains", "value"}``);
    ``storage_options`` go to fsspec for object storage (``s3://``, ``gs://``, ...).
    """
    loc = fmt.Location.of(path_or_url, storage_options)
    with fmt.remote_errors(loc, "open"):
        group = fmt.open_group(loc, "r")
        manifest = fmt.read_manifest(group, loc)
        version = manifest["version"]
        records = fmt.read_table(loc, "records", version)
        models = fmt.read_table(loc, "models", version)
        n = manifest["n_filters"]
        _check_layout(group, manifest, loc)
        problems = check_tables(records, models, manifest)
        if problems:
            raise StoreError(f"{loc.display}: the tables of version {version} do not match the manifest: "
                             f"{'; '.join(problems)}. Run `filtershift verify` and restore the store from a copy "
                             "or convert it again.")
        weights = _lazy(group[fmt.WEIGHTS], loc, n, manifest["integrity"].get("chunk_sums"))
        filter_id = _lazy(group[fmt.FILTER_ID], loc, n) if manifest.get("reordered") else None
    rules = manifest.get("label_rules", fmt.DEFAULT_LABEL_RULES) if label_rules is None else label_rules
    attrs = {"store": loc.display, "version": version, "schema_version": manifest["schema_version"]}
    return _build(weights, records, models, rules, attrs, filter_id=filter_id)


def _lazy(array, loc: fmt.Location, n: int, chunk_sums=None) -> da.Array:
    """Rows ``[0, n)`` of a store array, read and checked chunk by chunk (see :mod:`filtershift.store.chunks`);
    chunks wholly past ``n`` are never requested."""
    chunks = (array.chunks[0],) + tuple(array.shape[1:])
    return da.from_array(ChunkReader(array, loc, n, chunk_sums), chunks=chunks, asarray=True,
                         name=f"{array.basename}-{tokenize(loc.url, array.shape, n, chunk_sums)}", fancy=False)[:n]


def _check_layout(group, manifest: dict, loc: fmt.Location) -> None:
    """The arrays must hold what the manifest promises: ``n_filters`` rows of 9 values in chunks of
    ``chunk_filters`` rows, one recorded sum per chunk (reads check every chunk against it)."""
    n, chunk = manifest["n_filters"], manifest["chunk_filters"]
    remedy = "Run `filtershift verify` and restore the store from a copy or convert it again."
    for name in (fmt.WEIGHTS, fmt.FILTER_ID) if manifest.get("reordered") else (fmt.WEIGHTS,):
        if name not in group:
            raise StoreError(f"{loc.display}: the array '{name}' is missing; the store is damaged. {remedy}")
        array = group[name]
        if array.shape[0] < n or array.shape[1:] != ((9,) if name == fmt.WEIGHTS else ()):
            raise StoreError(f"{loc.display}: the manifest says {n} filters, but the array '{name}' has shape "
                             f"{array.shape}; the store is damaged. {remedy}")
        if array.chunks[0] != chunk:
            raise StoreError(f"{loc.display}: the array '{name}' has chunks of {array.chunks[0]} rows, the "
                             f"manifest says {chunk}; the store is damaged. {remedy}")
    sums = manifest.get("integrity", {}).get("chunk_sums")
    if sums is not None and len(sums) != -(-n // chunk):
        raise StoreError(f"{loc.display}: the manifest records {len(sums)} chunk sums for {-(-n // chunk)} "
                         f"chunks; the store is damaged. {remedy}")


def from_arrays(weights, records: pd.DataFrame, models: pd.DataFrame, *, chunk_filters: int | None = None,
                label_rules=fmt.DEFAULT_LABEL_RULES) -> xr.Dataset:
    """The Dataset of an in-memory data set: ``weights`` (N, 9) or (N, 3, 3), a records table with
    model_id, conv_depth, conv_depth_norm and n (optionally layer, in/out channels, groups), and a models table
    with model_id plus meta columns. Same shape as :func:`open_store`'s result."""
    w = weights if isinstance(weights, da.Array) else np.asarray(weights)
    if w.ndim == 3 and w.shape[1:] == (3, 3):
        w = w.reshape(w.shape[0], 9)
    if w.ndim != 2 or w.shape[1] != 9:
        raise InputError(f"weights have shape {w.shape}; expected (N, 9) or (N, 3, 3).")
    records = normalise_records(records)
    if int(records["n"].sum()) != w.shape[0]:
        raise InputError(f"records cover {int(records['n'].sum())} filters but weights hold {w.shape[0]}.")
    models = normalise_models(models, records)
    chunk = chunk_filters or fmt.DEFAULT_CHUNK_FILTERS
    if not isinstance(w, da.Array):
        w = da.from_array(w.astype(np.float32, copy=False), chunks=(chunk, 9))
    attrs = {"store": "", "version": 0, "schema_version": fmt.SCHEMA_VERSION}
    return _build(w, records, models, label_rules, attrs)


def normalise_records(records: pd.DataFrame) -> pd.DataFrame:
    """Fill the derived record columns (start, stop, record, ...) with the documented types."""
    rec = records.reset_index(drop=True).copy()
    missing = {"model_id", "conv_depth", "n"} - set(rec.columns)
    if missing:
        raise InputError(f"records table lacks column(s) {sorted(missing)}.")
    if "conv_depth_norm" not in rec:
        depth_max = rec.groupby("model_id")["conv_depth"].transform("max").replace(0, 1)
        rec["conv_depth_norm"] = rec["conv_depth"] / depth_max
    stop = np.cumsum(rec["n"].to_numpy(dtype=np.int64))
    rec["start"] = stop - rec["n"].to_numpy(dtype=np.int64)
    rec["stop"] = stop
    rec["record"] = np.arange(len(rec), dtype=np.int32)
    rec["source_start"] = rec["source_start"].fillna(pd.Series(rec["start"])) if "source_start" in rec \
        else rec["start"]
    for col in ("layer",):
        if col not in rec:
            rec[col] = ""
    for col in ("in_channels", "out_channels", "groups"):
        if col not in rec:
            rec[col] = pd.array([pd.NA] * len(rec), dtype="Int64")
    for col, dtype in fmt.RECORD_COLUMNS.items():
        rec[col] = rec[col].fillna("").astype(str) if dtype == "str" else rec[col].astype(dtype)
    return rec[list(fmt.RECORD_COLUMNS)]


def normalise_models(models: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    mod = models.reset_index(drop=("model_id" in models.columns)).copy()
    if "model_id" not in mod:
        raise InputError("models table lacks a model_id column (or index).")
    mod["model_id"] = mod["model_id"].astype("int64")
    if mod["model_id"].duplicated().any():
        raise InputError("models table has duplicate model_id values.")
    unknown = set(records["model_id"]) - set(mod["model_id"])
    if unknown:
        raise InputError(f"records refer to {len(unknown)} model_id(s) missing from the models table, "
                         f"e.g. {sorted(unknown)[:5]}.")
    counts = records.groupby("model_id")["n"].sum()
    mod["n_filters"] = mod["model_id"].map(counts).fillna(0).astype("int64")
    if "weights_sha256" not in mod:
        mod["weights_sha256"] = ""
    return mod.sort_values("model_id").reset_index(drop=True)


def _per_filter(values: np.ndarray, starts: np.ndarray, stops: np.ndarray, chunks: tuple[int, ...],
                name: str) -> da.Array:
    """A dask array that repeats one value per record over the record's filters, block by block.

    Each block's task holds only the values of the records that overlap it, so the graph stays small.
    """
    token = f"{name}-{tokenize(values, starts, stops, chunks)}"
    dsk = {}
    offset = 0
    for i, size in enumerate(chunks):
        lo, hi = offset, offset + size
        r0 = int(np.searchsorted(stops, lo, side="right"))
        r1 = int(np.searchsorted(starts, hi, side="left"))
        counts = np.minimum(stops[r0:r1], hi) - np.maximum(starts[r0:r1], lo)
        dsk[(token, i)] = (np.repeat, values[r0:r1].copy(), counts)
        offset = hi
    graph = HighLevelGraph.from_collections(token, dsk, dependencies=[])
    return da.Array(graph, token, chunks=(chunks,), dtype=values.dtype, meta=np.empty(0, values.dtype))


def _build(weights: da.Array, records: pd.DataFrame, models: pd.DataFrame, rules, attrs: dict,
           filter_id: da.Array | None = None) -> xr.Dataset:
    starts = records["start"].to_numpy(np.int64)
    stops = records["stop"].to_numpy(np.int64)
    chunks = weights.chunks[0]
    model_index = pd.Index(models["model_id"])
    model_row = model_index.get_indexer(records["model_id"])

    per_record = {"record": records["record"].to_numpy(np.int32),
                  "model_id": records["model_id"].to_numpy(np.int64),
                  "conv_depth": records["conv_depth"].to_numpy(np.int32),
                  "conv_depth_norm": records["conv_depth_norm"].to_numpy(np.float32)}
    coord_attrs = {}
    grouping = fmt.grouping_columns(models)
    for name, column in grouping.items():
        vocab, codes = fmt.vocabulary_codes(fmt.apply_label_rules(models[column], column, rules))
        per_record[name] = codes[model_row]
        coord_attrs[name] = {"labels": vocab, "column": column}
    coords = {name: xr.Variable("filter", _per_filter(np.asarray(values), starts, stops, chunks, name),
                                attrs={**coord_attrs.get(name, {}), PER_RECORD: "tables"})
              for name, values in per_record.items()}
    if filter_id is not None:
        coords["filter_id"] = xr.Variable("filter", filter_id)
    ds = xr.Dataset({"weights": (("filter", "k"), weights)}, coords=coords)
    ds["weights"].attrs.update({"description": "3x3 kernels, row-major (k = 3*y + x)"})
    ds.attrs.update(attrs)
    ds.attrs.update({"filtershift_schema": fmt.SCHEMA_VERSION, "n_filters": int(weights.shape[0]),
                     "grouping": grouping, "label_rules": [dict(r) for r in rules]})
    ds.attrs[TABLES_ATTR] = (records, models)
    ds.attrs[RECORD_COORDS_ATTR] = pd.DataFrame(per_record).set_index("record", drop=False)
    return ds


def records(ds: xr.Dataset) -> pd.DataFrame:
    """The records table (one row per record: model x conv depth, or one layer) of a Dataset."""
    return _tables(ds)[0]


def models(ds: xr.Dataset) -> pd.DataFrame:
    """The models table (one row per model, every meta column) of a Dataset."""
    return _tables(ds)[1]


def _tables(ds: xr.Dataset):
    try:
        return ds.attrs[TABLES_ATTR]
    except KeyError:
        raise InputError("this Dataset carries no filtershift tables; open it with filtershift.open_store "
                         "or build it with filtershift.from_arrays.") from None


def resolve_coord(ds: xr.Dataset, key: str) -> str:
    """Coordinate name for a coordinate name or an original meta column name ('Visual Category')."""
    if key in ds.coords:
        return key
    for name, column in ds.attrs.get("grouping", {}).items():
        if column == key:
            return name
    if fmt.snake_case(key) in ds.coords:
        return fmt.snake_case(key)
    choices = sorted(set(ds.attrs.get("grouping", {})) | {"model_id", "conv_depth"})
    raise InputError(f"unknown grouping {key!r}; choose one of {choices} (or the original column names).")


def select(ds: xr.Dataset, **criteria) -> xr.Dataset:
    """Lazily keep the records whose labels match, e.g. ``select(ds, task="Classification",
    visual_category=["medical ct", "medical mri"], conv_depth=0)``.

    Keys are coordinate or column names; values a label or a list of labels (model_id and conv_depth take
    numbers). Works on whole records, so the result is a few contiguous slices concatenated: still lazy.
    """
    recs, mods = _tables(ds)
    keep = pd.Series(True, index=recs.index)
    rules = ds.attrs.get("label_rules", fmt.DEFAULT_LABEL_RULES)
    for key, wanted in criteria.items():
        name = resolve_coord(ds, key)
        wanted_list = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        if name in ("model_id", "conv_depth", "record"):
            keep &= recs[name].isin(wanted_list)
            continue
        if name == "conv_depth_norm":
            raise InputError("select by conv_depth_norm is ambiguous; use ds.where or select conv_depth.")
        column = ds.attrs["grouping"][name]
        labels = fmt.apply_label_rules(mods[column], column, rules)
        vocab = ds[name].attrs["labels"]
        unknown = [w for w in wanted_list if w not in vocab]
        if unknown:
            raise InputError(f"{name}: no label(s) {unknown}; the labels are {vocab}.")
        chosen = set(mods["model_id"][labels.isin(wanted_list).to_numpy()])
        keep &= recs["model_id"].isin(chosen)
    rows = recs.index[keep.to_numpy()]
    if len(rows) == 0:
        raise InputError(f"select({criteria}) matched no records.")
    runs = []
    for _, grp in itertools.groupby(enumerate(rows), key=lambda t: t[1] - t[0]):
        grp = list(grp)
        runs.append((int(recs["start"].iat[grp[0][1]]), int(recs["stop"].iat[grp[-1][1]])))
    parts = [ds.isel(filter=slice(a, b)) for a, b in runs]
    out = parts[0] if len(parts) == 1 else xr.concat(parts, dim="filter", data_vars="all", coords="all",
                                                     compat="override", join="override",
                                                     combine_attrs="override")
    out.attrs = dict(ds.attrs)
    out.attrs["n_filters"] = int(out.sizes["filter"])
    out.attrs["selection"] = {k: (list(v) if isinstance(v, (list, tuple, set)) else v)
                              for k, v in criteria.items()}
    return out
