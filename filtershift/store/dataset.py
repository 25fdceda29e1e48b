"""A store (or in-memory arrays) as a lazy, labelled ``xarray.Dataset``.

The ``filter`` dimension is indexed by a :class:`~filtershift.store.index.RecordIndex` (runs of records; a pandas
index of 1.4e9 rows would be built eagerly): it holds the records and models tables and owns every per-filter
coordinate, computed per block with ``np.repeat`` from the small tables, chunked exactly like ``weights``, grouping
coordinates as string labels. ``ds.sel(task=...)``, ``isel``, ``xr.concat`` keep the tables in step with the
filters; ``ds.attrs`` holds only scalars and strings. Nothing of size N is computed on open.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from filtershift.errors import InputError, StoreError
from filtershift.store import format as fmt
from filtershift.store.chunks import ChunkReader
from filtershift.store.index import LABEL_DTYPE, META, RecordIndex, Tables
from filtershift.store.options import storage_options_of
from filtershift.store.verify import check_tables

#: Selection keys that are no grouping coordinate (offered with the groupings when a key is unknown).
INDEX_KEYS = ("model_id", "conv_depth")


def open_store(path_or_url, *, label_rules=None, storage_options: dict | None = None, **legacy) -> xr.Dataset:
    """Open a complete store as a dask-backed Dataset; computes nothing of size N.

    ``label_rules`` replaces the store's label-cleaning rules (a list of ``{"column", "contains", "value"}``);
    ``storage_options`` (a dict) go to fsspec for object storage (``s3://``, ``gs://``, ...), as in
    ``xr.open_zarr``; options as keyword arguments are deprecated.

    Parameters
    ----------
    path_or_url : str or os.PathLike
        Store path or fsspec URL (``s3://bucket/db.zarr``, ...).
    label_rules : list of dict, optional
        Label-cleaning rules replacing the store's, each ``{"column": ..., "contains": ..., "value": ...}``.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for a URL.
    **legacy
        Deprecated: storage options as keyword arguments (a FutureWarning; merged under ``storage_options``).

    Returns
    -------
    xarray.Dataset
        Dims (filter, k): ``weights`` (filter, k) float32, lazy (dask), k = 3*y + x; per-filter index coordinates
        ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm`` and one string coordinate per grouping
        column (e.g. ``task``, ``visual_category``), all served by a ``RecordIndex`` that holds the records and
        models tables; attrs ``store``, ``version``, ``schema_version``, ``filtershift_schema``.

    Raises
    ------
    filtershift.errors.StoreError
        If the store is missing, incomplete, damaged (arrays, chunk sums or tables not matching the manifest) or
        unreachable.
    filtershift.errors.InputError
        If ``storage_options`` is not a dict.

    See Also
    --------
    select, records, models

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> ds["weights"].dims
    ('filter', 'k')
    >>> remote = filtershift.open_store("s3://bucket/db.zarr", storage_options={"anon": True})
    """
    loc = fmt.Location.of(path_or_url, storage_options_of(storage_options, legacy, "open_store"))
    with fmt.remote_errors(loc, "open"):
        group = fmt.open_group(loc, "r")
        manifest = fmt.read_manifest(group, loc)
        version = manifest["version"]
        schema = manifest["schema_version"]
        records = fmt.read_table(loc, "records", version, schema=schema, group=group)
        models = fmt.read_table(loc, "models", version, schema=schema, group=group)
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
    """The Dataset of an in-memory data set, shaped like :func:`open_store`'s result.

    ``weights`` (N, 9) or (N, 3, 3), a records table with model_id, conv_depth, conv_depth_norm and n
    (optionally layer, in/out channels, groups), and a models table with model_id plus meta columns. Same shape as
    :func:`open_store`'s result.

    Parameters
    ----------
    weights : array_like or dask.array.Array
        The filters, shape (N, 9) or (N, 3, 3), in record order; numpy input is stored as float32.
    records : pandas.DataFrame
        One row per record (model x conv depth, or one layer), in the order of the filters: ``model_id``,
        ``conv_depth``, ``n`` (filters), optionally ``conv_depth_norm`` (default conv_depth / the model's largest
        conv_depth), ``layer``, ``in_channels``, ``out_channels``, ``groups``; the ``n`` sum to N.
    models : pandas.DataFrame
        One row per model: ``model_id`` (column or index, unique, covering every record's model) plus meta
        columns; grouping columns (e.g. ``Task``) become coordinates.
    chunk_filters : int, optional
        Chunk size along ``filter`` of numpy weights; default 262144.
    label_rules : sequence of dict, default DEFAULT_LABEL_RULES
        Label-cleaning rules, as for :func:`open_store`.

    Returns
    -------
    xarray.Dataset
        Dims (filter, k): ``weights`` (filter, k) float32, lazy (dask), k = 3*y + x; per-filter index coordinates
        ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm`` and one string coordinate per grouping
        column (e.g. ``task``, ``visual_category``), all served by a ``RecordIndex`` that holds the records and
        models tables; attrs ``store``, ``version``, ``schema_version``, ``filtershift_schema``.
        ``store`` is empty and ``version`` 0.

    Raises
    ------
    filtershift.errors.InputError
        If ``weights`` have another shape, the records do not cover exactly N filters, or a table lacks a required
        column, has duplicate model ids or refers to unknown models.
    """
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


def _build(weights: da.Array, records: pd.DataFrame, models: pd.DataFrame, rules, attrs: dict,
           filter_id: da.Array | None = None) -> xr.Dataset:
    model_row = pd.Index(models["model_id"]).get_indexer(records["model_id"])
    values = {name: records[name].to_numpy(dtype) for name, dtype in META.items()}
    grouping = fmt.grouping_columns(models)
    labels, codes, missing = {}, {}, {}
    for name, column in grouping.items():
        clean, missing_label = fmt.clean_labels(models[column], column, rules)
        vocab, model_codes = fmt.vocabulary_codes(clean)
        labels[name], codes[name] = tuple(vocab), model_codes[model_row]
        values[name] = np.asarray(vocab, dtype=LABEL_DTYPE)[codes[name]]
        if missing_label is not None:
            missing[name] = missing_label
    tables = Tables(records, models, dict(grouping), labels, values, codes,
                    tuple(tuple(sorted(dict(r).items())) for r in rules), missing)
    index = RecordIndex.from_tables(tables, weights.chunks[0], weights.shape[1:], weights.dtype)
    coords = xr.Coordinates.from_xindex(index)
    ds = xr.Dataset({"weights": (("filter", "k"), weights)}, coords=coords)
    if filter_id is not None:
        ds = ds.assign_coords(filter_id=xr.Variable("filter", filter_id))
    ds["weights"].attrs.update({"description": "3x3 kernels, row-major (k = 3*y + x)"})
    ds.attrs.update(attrs)
    ds.attrs.update({"filtershift_schema": fmt.SCHEMA_VERSION})
    tables.shared["dataset"] = ds
    return ds


def whole(ds: xr.Dataset) -> xr.Dataset:
    """The whole Dataset (of :func:`open_store` or :func:`from_arrays`) that ``ds`` was selected from: ``ds``
    itself when it is that Dataset, has no record index, or its tables were not built here (then nothing else is
    known). O(1): a selection's index shares the tables, which keep the whole Dataset (lazy)."""
    index = ds.xindexes.get("record")
    if not isinstance(index, RecordIndex):
        return ds
    return index.tables.shared.get("dataset", ds)


def is_whole(ds: xr.Dataset) -> bool:
    """True when ``ds`` holds every filter of :func:`whole` (its full index and the same weights)."""
    root = whole(ds)
    if root is ds:
        return True
    index = ds.xindexes.get("record")
    w, r = ds["weights"].data, root["weights"].data
    name = getattr(w, "name", None)
    same = w is r or (name is not None and name == getattr(r, "name", None))
    return bool(index.full) and ds.sizes["filter"] == root.sizes["filter"] and same


def record_index(ds: xr.Dataset) -> RecordIndex:
    """The :class:`RecordIndex` of a filtershift Dataset (or a selection of one)."""
    index = ds.xindexes.get("record")
    if not isinstance(index, RecordIndex):
        raise InputError("this Dataset carries no filtershift record index; open it with filtershift.open_store "
                         "or build it with filtershift.from_arrays (and keep its record coordinate).")
    return index


def records(ds: xr.Dataset) -> pd.DataFrame:
    """The records table of a Dataset: one row per record (model x conv depth, or one layer) present in it.

    In a selection, ``start``/``stop``/``n`` are positions and counts in the selection.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`open_store` or :func:`from_arrays`) or a selection of one.

    Returns
    -------
    pandas.DataFrame
        Columns ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm``, ``layer``, ``in_channels``,
        ``out_channels``, ``groups``, ``start``, ``stop``, ``n``, ``source_start``.

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` carries no filtershift record index.
    """
    return record_index(ds).record_table()


def models(ds: xr.Dataset) -> pd.DataFrame:
    """The models table (one row per model, every meta column) of the models present in a Dataset.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`open_store` or :func:`from_arrays`) or a selection of one.

    Returns
    -------
    pandas.DataFrame
        Columns ``model_id``, the meta columns of the store (e.g. ``Task``, ``Visual Category``), ``n_filters``
        (filters of the model in ``ds``) and ``weights_sha256``.

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` carries no filtershift record index.
    """
    return record_index(ds).model_table()


def grouping(ds: xr.Dataset) -> dict[str, str]:
    """Grouping coordinate name -> models-table column, e.g. ``{"visual_category": "Visual Category"}``."""
    return dict(record_index(ds).tables.grouping)


def record_table(ds: xr.Dataset) -> pd.DataFrame:
    """Per-record meta of the records present in ``ds``, indexed by record id (sorted).

    Columns: model_id, conv_depth, conv_depth_norm and every grouping coordinate as a ``pandas.Categorical``
    (categories: its labels, sorted). O(records); what the statistics read instead of reducing the per-filter
    coordinates.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`open_store` or :func:`from_arrays`) or a selection of one.

    Returns
    -------
    pandas.DataFrame
        Index ``record`` (int64, sorted); columns ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm``
        and one categorical column per grouping coordinate.

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` carries no filtershift record index.
    """
    index = record_index(ds)
    t = index.tables
    rows = np.unique(index.row)
    data = {name: t.values[name][rows] for name in META}
    for name in t.grouping:
        data[name] = pd.Categorical.from_codes(t.codes[name][rows], categories=list(t.labels[name]))
    out = pd.DataFrame(data, index=pd.Index(t.values["record"][rows].astype(np.int64), name="record"))
    return out.sort_index()


def groupers(ds: xr.Dataset, *names: str) -> dict:
    """``{name: UniqueGrouper(labels=...)}`` for a lazy groupby by per-filter coordinates.

    For example ``ds.weights.groupby(**groupers(ds, "task", "conv_depth")).mean()``. xarray needs the labels of a
    dask coordinate up front; they come from the tables (O(records)), and the result's coordinates are the labels.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`open_store` or :func:`from_arrays`) or a selection of one.
    *names : str
        Coordinates of the record index (or original meta column names such as ``"Visual Category"``).

    Returns
    -------
    dict
        Coordinate name -> ``xarray.groupers.UniqueGrouper`` with its labels (all labels of a grouping
        coordinate; the values present in ``ds`` for the others).

    Raises
    ------
    filtershift.errors.InputError
        If ``ds`` carries no record index or a name is not one of its coordinates.
    """
    from xarray.groupers import UniqueGrouper

    index = record_index(ds)
    t = index.tables
    rows = np.unique(index.row)
    out = {}
    for key in names:
        name = fmt.resolve_name(key, grouping(ds), ds.coords, INDEX_KEYS)
        if name not in t.values:
            raise InputError(f"{key!r} is not a coordinate of the record index; choose one of {t.names}.")
        labels = list(t.labels[name]) if name in t.grouping else np.unique(t.values[name][rows])
        out[name] = UniqueGrouper(labels=labels)
    return out


def select(ds: xr.Dataset, **criteria) -> xr.Dataset:
    """Lazily keep the records whose labels match.

    For example ``select(ds, task="Classification", visual_category=["medical ct", "medical mri"],
    conv_depth=0)``. Keys are coordinate or column names; values a label or a list of labels (model_id and
    conv_depth take numbers). Works on whole runs of records, so the result is one lazy selection of slices of
    blocks (:func:`~filtershift.store.multislice.select_runs`, O(runs + chunks), no per-filter positions), and its
    index (hence :func:`records`, :func:`models`) follows the selection.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset (from :func:`open_store` or :func:`from_arrays`) or a selection of one.
    **criteria
        Coordinate (or original column) name -> a label or a list/tuple/set of labels; all criteria must match.
        ``conv_depth_norm`` is refused (ambiguous).

    Returns
    -------
    xarray.Dataset
        The matching filters, lazy, with the coordinates and attrs of ``ds`` plus ``attrs["selection"]``.

    Raises
    ------
    filtershift.errors.InputError
        If a key is unknown, is ``conv_depth_norm``, or nothing matches.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> sub = filtershift.select(ds, task="Classification", conv_depth=[0, 1])
    >>> int(filtershift.records(sub)["n"].sum()) == sub.sizes["filter"]
    True
    """
    from filtershift.store.multislice import select_runs

    index = record_index(ds)
    keep = np.ones(len(index.row), bool)
    for key, wanted in criteria.items():
        name = fmt.resolve_name(key, grouping(ds), ds.coords, INDEX_KEYS)
        if name == "conv_depth_norm":
            raise InputError("select by conv_depth_norm is ambiguous; use ds.where or select conv_depth.")
        keep &= index.match(name, list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted])
    if not keep.any():
        raise InputError(f"select({criteria}) matched no records.")
    out = select_runs(ds, index.start[keep], (index.stop - index.start)[keep])
    out.attrs = dict(ds.attrs)
    out.attrs["selection"] = ", ".join(f"{k}={v!r}" for k, v in criteria.items())
    return out


def query(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Lazily keep the records that satisfy an expression over their meta.

    The expression language of the command line's ``--where`` (:mod:`filtershift.store.query`): comparisons of
    coordinates, records-table and models-table columns with labels or numbers, ``in [...]``, ``and``/``or``/``not``
    and parentheses; parsed, never evaluated as Python. Evaluated once per record (O(records)); the result is a
    selection of slices of blocks, like :func:`select`.

    Parameters
    ----------
    ds : xarray.Dataset
        A filtershift Dataset or a selection of one.
    where : str
        For example ``'task == "Classification" and conv_depth_norm <= 0.3'`` or
        ``'`Training-Dataset` in ["ImageNet1k", "CIFAR-10"] and total_filters > 1e5'``.

    Returns
    -------
    xarray.Dataset
        The matching filters, lazy; its index (hence :func:`records`, :func:`models`) follows the selection and
        ``attrs["selection"]`` holds the expression.

    Raises
    ------
    filtershift.errors.InputError
        If the expression does not parse (the message points at the place), names an unknown column or label (the
        message lists the choices), compares text with a number, or matches no record.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> early = filtershift.query(ds, "conv_depth_norm <= 0.3 and task == 'Classification'")
    >>> bool((filtershift.records(early)["conv_depth_norm"] <= 0.3).all())
    True
    """
    from filtershift.store.multislice import select_runs

    starts, lengths = record_index(ds).runs_where(where)
    if len(starts) == 0:
        raise InputError(f"--where {where!r} matched no records.")
    out = select_runs(ds, starts, lengths)
    out.attrs = dict(ds.attrs)
    out.attrs["selection"] = where
    return out
