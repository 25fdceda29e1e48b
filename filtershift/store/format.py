"""The on-disk layout of a filtershift store (see docs/format.md): the only module that knows paths and keys.

A store is a Zarr v3 group; its manifest lives in the group attributes under ``"filtershift"`` and is written
last and atomically (zarr's local store writes through a temporary file and a rename; object stores put whole
objects), so a reader sees one committed snapshot or the next, never a mix.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import io
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import zarr
from zarr.core.sync import sync as zarr_sync

from filtershift import credentials
from filtershift._version import __version__
from filtershift.errors import IncompleteStoreError, InputError, StoreError
from filtershift.ingest import MODEL_SUFFIXES

SCHEMA_VERSION = 2
#: Schema versions this filtershift reads (``filtershift upgrade`` migrates 1 to 2).
READABLE_SCHEMAS = (1, 2)
MANIFEST_KEY = "filtershift"
WEIGHTS = "weights"
FILTER_ID = "filter_id"
TABLES = "tables"
PROGRESS_FILE = ".filtershift-progress.json"
DEFAULT_CHUNK_FILTERS = 1 << 18
CODECS = ("none", "zstd", "lz4")
DEFAULT_CODEC = "none"

#: Label cleaning applied when grouping coordinates are built; raw labels stay in the tables.
DEFAULT_LABEL_RULES: tuple[dict, ...] = (
    {"column": "Task", "contains": "Segmentation", "value": "Segmentation"},
)

RECORD_COLUMNS = {
    "record": "int32",
    "model_id": "int64",
    "conv_depth": "int32",
    "conv_depth_norm": "float32",
    "layer": "str",
    "in_channels": "Int64",
    "out_channels": "Int64",
    "groups": "Int64",
    "start": "int64",
    "stop": "int64",
    "n": "int64",
    "source_start": "int64",
}


@dataclass(frozen=True)
class Location:
    """Where a store lives: a local path or an fsspec URL plus its storage options."""

    url: str
    storage_options: dict

    @classmethod
    def of(cls, path_or_url, storage_options: dict | None = None, *, write: bool = False) -> Location:
        """Where a store lives, resolved once, where the user typed it.

        A local path (or ``file://`` URL) is made absolute: dask workers run in other working directories, and a
        relative path would name another (or no) store there. ``write``: the store will be written (read-only
        schemes such as https:// are refused). Unknown schemes and paths with a component named after a scheme
        (``s3:``, a URL that lost its '//') are refused."""
        from filtershift.outputs import check

        url = os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else str(path_or_url)
        check(url.rstrip("/"), "store", write=write)
        if "://" not in url:
            url = os.path.abspath(url)
        elif url.startswith("file://"):
            url = "file://" + os.path.abspath(url[len("file://"):])
        return cls(url.rstrip("/") or "/", _with_endpoint(url, dict(storage_options or {})))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str | None:
        """The store's directory on this host, or None for object storage."""
        if not self.is_local:
            return None
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url

    def scrub(self, text: str) -> str:
        """``text`` without this location's credentials (storage option values, user:password@ in URLs)."""
        return credentials.scrub(text, credentials.secret_values(self.storage_options))

    @property
    def display(self) -> str:
        """The URL without credentials, for messages and logs."""
        return credentials.url(self.url)

    def fs(self):
        fs, root = fsspec.core.url_to_fs(self.url, **_s3_reads(self.url, self.storage_options))
        _one_retry_loop(fs, self.storage_options)
        return fs, root

    def zarr_store(self, read_only: bool):
        if self.is_local:
            return zarr.storage.LocalStore(self.local_path, read_only=read_only)
        store = zarr.storage.FsspecStore.from_url(self.url, storage_options=_s3_reads(self.url, self.storage_options),
                                                  read_only=read_only)
        _one_retry_loop(store.fs, self.storage_options)
        return store

    def join(self, *parts: str) -> str:
        return "/".join([self.url, *parts])


def _s3_reads(url: str, options: dict) -> dict:
    """s3fs options for reading a store: ``max_concurrency=1`` unless set (s3fs >= 2025 asks each object's size, a
    HEAD, before every whole-object GET in order to split large ones; chunks and table columns are small, and the
    HEADs doubled the requests of every read)."""
    return {"max_concurrency": 1, **options} if url.startswith(("s3://", "s3a://")) else options


def _one_retry_loop(fs, options: dict):
    """When ``config_kwargs`` bounds botocore's attempts, s3fs's own retry loop around each request (5 rounds, on
    timeouts too) is turned off on ``fs``: the user's bound is then the bound (a silent endpoint took 25 x it)."""
    # botocore rewrites a given dict's max_attempts into total_max_attempts in place
    bounded = {"max_attempts", "total_max_attempts"} & set((options.get("config_kwargs") or {}).get("retries") or {})
    if bounded and hasattr(fs, "retries"):
        fs.retries = 1
    return fs


def _with_endpoint(url: str, options: dict) -> dict:
    """For s3:// URLs, the endpoint this process resolves from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO,
    Ceph, moto) becomes an explicit storage option, so dask workers started with another environment reach the
    same store, not AWS's bucket of the same name. Credentials stay where they are."""
    if not url.startswith(("s3://", "s3a://")) or "endpoint_url" in options or \
            "endpoint_url" in options.get("client_kwargs", {}):
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {**options, "endpoint_url": endpoint} if endpoint else options


#: Libraries whose exceptions mean "the object store could not be reached or refused the request".
_REMOTE_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure", "google",
                         "urllib3", "requests", "fsspec")


def _remote_reason(exc: BaseException) -> str:
    """What went wrong with a request to object storage, in words (the exception's class is not for users)."""
    name, text = type(exc).__name__.lower(), str(exc).lower()
    if isinstance(exc, PermissionError) or "accessdenied" in name or "access denied" in text or "forbidden" in text:
        return "access denied"
    if isinstance(exc, TimeoutError) or "timeout" in name or "timed out" in text or "timeout" in text:
        return "the endpoint did not answer in time"
    if "credential" in name or "credentials" in text:
        return "no usable credentials"
    if isinstance(exc, ConnectionError) or "connect" in name or "could not connect" in text:
        return "cannot connect to the endpoint"
    if isinstance(exc, FileNotFoundError) or "nosuch" in name:
        return "not found"
    return "the request failed"


@contextmanager
def remote_errors(loc: Location, action: str = "open", hint: str = ""):
    """Turn a failure to reach object storage (connection refused, timeout, access denied) into a StoreError that
    names the store and the remedy, without credentials; local paths and filtershift's own errors pass through.
    ``hint`` is a sentence added before the generic remedies."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        root = type(exc).__module__.split(".", 1)[0]
        if loc.is_local or not (isinstance(exc, (OSError, TimeoutError)) or root in _REMOTE_ERROR_MODULES):
            raise
        raise StoreError(f"{loc.display}: cannot {action} the store: {_remote_reason(exc)} ({loc.scrub(str(exc))}). "
                         f"{hint + ' ' if hint else ''}Check the URL, "
                         "the endpoint (storage option endpoint_url, or AWS_ENDPOINT_URL), the network and the "
                         "credentials; s3fs storage options config_kwargs={'retries': {'max_attempts': N}, "
                         "'connect_timeout': S} bound the wait.") from None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_manifest(chunk_filters: int, codec: str, state: str, schema: int = SCHEMA_VERSION) -> dict:
    if schema not in READABLE_SCHEMAS:
        raise StoreError(f"schema {schema!r} is not one of {list(READABLE_SCHEMAS)}.")
    return {
        "schema_version": int(schema),
        "state": state,
        "version": 0,
        "n_filters": 0,
        "n_records": 0,
        "n_models": 0,
        "chunk_filters": int(chunk_filters),
        "codec": codec,
        "vocabularies": {},
        "label_rules": [dict(r) for r in DEFAULT_LABEL_RULES],
        "provenance": [],
        "integrity": {"n_filters": 0, "n_nonfinite": 0, "nonfinite_policy": "error", "weights_sum": 0.0,
                      "chunk_sums": []},
        "reordered": False,
        "writer": f"filtershift {__version__}",
    }


def open_group(loc: Location, mode: str = "r") -> zarr.Group:
    """The store's Zarr group; a StoreError saying what is there instead when it is not a store."""
    with remote_errors(loc, "open"):
        try:
            return zarr.open_group(store=loc.zarr_store(read_only=(mode == "r")), mode=mode, zarr_format=3,
                                   use_consolidated=False)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            pass
        raise StoreError(f"{loc.display}: {_not_a_store(loc)}") from None


#: The HDF5 format signature; it sits at byte 0 or, after a user block, at 512, 1024, 2048, ...
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CREATE = "create one with `filtershift convert SRC.h5 DST.zarr` or `filtershift synth DST.zarr --format zarr`."


def _not_a_store(loc: Location) -> str:
    """What is at ``loc`` instead of a store, and the remedy: a missing bucket or path, an HDF5 source, a model file,
    another file, a directory without a store. If the location cannot be examined either, the reason stays general."""
    try:
        fs, root = loc.fs()
        bucket = root.split("/", 1)[0]
        if not loc.is_local and bucket != root and not fs.exists(bucket):
            return (f"bucket {bucket!r} does not exist (or these credentials cannot see it), so no filtershift "
                    "store here. Check the bucket name and the endpoint (storage option endpoint_url, or "
                    "AWS_ENDPOINT_URL).")
        if not fs.exists(root):
            what = "no such file or directory" if loc.is_local else "nothing at this path"
            return f"{what}, so no filtershift store here. Check the path, or {_CREATE}"
        if fs.isfile(root):
            with fs.open(root, "rb") as f:
                head = f.read(2056)
            if any(head[at:at + 8] == _HDF5_SIGNATURE for at in (0, 512, 1024, 2048)):
                return (f"this is an HDF5 source, not a filtershift store; convert it first with "
                        f"`filtershift convert {loc.display} DB.zarr`.")
            if loc.url.lower().endswith(tuple(MODEL_SUFFIXES)):
                return (f"this is a model file, not a filtershift store; add it to one with `filtershift extract "
                        f"{loc.display} --store DB.zarr`, or place it with `filtershift compare {loc.display} "
                        "--store DB.zarr`.")
            return f"a file, not a filtershift store (a store is a directory with a zarr.json); {_CREATE}"
        if fs.exists(f"{root}/.zgroup"):
            return ("a Zarr v2 group, not a filtershift store (filtershift stores are Zarr v3 groups written by "
                    "`filtershift convert`).")
        if fs.exists(f"{root}/zarr.json"):
            return "its zarr.json describes no Zarr v3 group, so it is not a filtershift store."
        inside = sorted(f"{loc.display}/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in fs.ls(root, detail=False)
                        if fs.exists(f"{p.rstrip('/')}/zarr.json"))[:3]
        if inside:
            return (f"a directory without a zarr.json, not a filtershift store; it holds {', '.join(inside)}: pass "
                    "the store's own path.")
        return f"a directory without a zarr.json, not a filtershift store; {_CREATE}"
    except Exception:  # noqa: BLE001 - the location could not be examined either: say what is certain
        return f"no filtershift store here (nothing readable as a Zarr v3 group). Check the path, or {_CREATE}"


def root_document(group: zarr.Group) -> dict:
    """The root ``zarr.json`` as stored now (a group object keeps the metadata it was opened with, and a schema-2
    manifest is written past it, see :func:`write_manifest`)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    raw = sync(group.store.get("zarr.json", prototype=default_buffer_prototype()))
    return {"attributes": group.attrs.asdict()} if raw is None else json.loads(raw.to_bytes())


def root_attributes(group: zarr.Group) -> dict:
    """The root group's attributes as stored now."""
    return dict(root_document(group).get("attributes") or {})


def read_manifest(group: zarr.Group, loc: Location, *, require_complete: bool = True) -> dict:
    manifest = root_attributes(group).get(MANIFEST_KEY)
    if not isinstance(manifest, dict):
        raise StoreError(f"{loc.display}: a Zarr group without a filtershift manifest; it was not written by "
                         "filtershift. Convert the source again with `filtershift convert`.")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version not in READABLE_SCHEMAS:
        raise StoreError(f"{loc.display}: store schema version {version!r} is newer than this filtershift "
                         f"({__version__}, schema {SCHEMA_VERSION}); upgrade filtershift.")
    if require_complete and manifest.get("state") != "complete":
        raise IncompleteStoreError(
            f"{loc.display}: the store is incomplete (state {manifest.get('state')!r}): a "
            f"{'conversion' if manifest.get('state') == 'converting' else 'write'} was interrupted. Run the same "
            "command again with --resume to finish it (or --overwrite to start again).")
    return manifest


def write_manifest(group: zarr.Group, manifest: dict) -> None:
    """Replace the manifest in one atomic metadata write (a rename on local disks, one object put elsewhere).

    Schema 2: the same write carries the consolidated metadata of every node (the root arrays' shapes among them),
    so a plain ``xr.open_zarr`` sees exactly the committed snapshot: rows and table versions written by a running
    append are not in it until this write."""
    manifest = json.loads(json.dumps(manifest))
    if int(manifest.get("schema_version", 1)) < 2:
        group.attrs.update({MANIFEST_KEY: manifest})
        return
    from zarr.core.buffer import cpu
    from zarr.core.sync import sync

    store = group.store
    attrs = {**root_attributes(group), MANIFEST_KEY: manifest}
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attrs,
           "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": _nodes(store)}}
    sync(store.set("zarr.json", cpu.Buffer.from_bytes(json.dumps(doc, indent=1).encode())))


def _nodes(store, prefix: str = "", depth: int | None = None) -> dict:
    """The metadata documents of every node below ``prefix`` (``depth`` levels deep; None: all), keyed by path,
    for the consolidated metadata. Other files (a lock, a progress file, schema-1 Parquet tables left by an
    interrupted upgrade) are skipped without zarr's warnings."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    async def walk(pre: str, level: int) -> dict:
        paths = [f"{pre}{name}" async for name in store.list_dir(pre)]
        raws = await asyncio.gather(*(store.get(f"{p}/zarr.json", prototype=default_buffer_prototype())
                                      for p in paths))          # concurrent: one round trip, not one per node
        found = {}
        for path, raw in zip(paths, raws):
            if raw is None:
                continue
            meta = json.loads(raw.to_bytes())
            found[path] = meta
            if meta.get("node_type") == "group" and (depth is None or level < depth):
                found.update(await walk(f"{path}/", level + 1))
        return found

    return sync(walk(prefix, 1))


# --- tables -------------------------------------------------------------------------------------------------
#
# Schema 1: one Parquet file per table and version, ``tables/{name}-v{K}.parquet``.
# Schema 2: one Zarr group per table and version, ``tables/v{K}/{name}``, one 1-D array per column (dimension
# ``record`` or ``model``); plus the current version's columns at the root, where ``xr.open_zarr`` shows them.

#: Dimension of each table's arrays.
TABLE_DIMS = {"records": "record", "models": "model"}
#: Attribute of a string column: the rows whose value is missing (stored as "", which xarray shows).
MISSING_ROWS = "missing_rows"
#: Attribute of ``weights`` (and ``filter_id``) in schema 2: every chunk was written, zeros too.
ALL_CHUNKS_WRITTEN = "all_chunks_written"
#: Write every chunk, also one whose values all equal the fill value (zarr skips those by default).
WRITE_ALL = {"write_empty_chunks": True}


def table_path(loc: Location, name: str, version: int) -> str:
    return loc.join(TABLES, f"{name}-v{version}.parquet")


def table_group(name: str, version: int) -> str:
    """Path of a schema-2 table in the store."""
    return f"{TABLES}/v{version}/{name}"


def view_name(table: str, column: str) -> str:
    """Root-level array name of a table column: records columns keep their names (``record`` is the dimension
    coordinate), models columns are ``model.{column}`` and ``model_id`` is the ``model`` coordinate."""
    if table == "records":
        return column
    return "model" if column == "model_id" else f"model.{column}"


def schema_of(loc: Location) -> int:
    return int(read_manifest(open_group(loc, "r"), loc, require_complete=False).get("schema_version", 1))


def write_table(loc: Location, name: str, version: int, df: pd.DataFrame, *, schema: int = SCHEMA_VERSION,
                group: zarr.Group | None = None) -> None:
    """Write one table version: schema 1 as Parquet (a temporary name first, then moved into place), schema 2
    as a Zarr group of column arrays (a new path; nothing reads it before the manifest names its version)."""
    if schema >= 2:
        group = group if group is not None else open_group(loc, "r+")
        write_columns(group, table_group(name, version), df, TABLE_DIMS[name])
        return
    fs, _ = loc.fs()
    final = fsspec.core.url_to_fs(table_path(loc, name, version), **loc.storage_options)[1]
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if loc.is_local:
        tmp = final + ".tmp"
        with fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        fs.mv(tmp, final)
    else:
        fs.pipe_file(final, buf.getvalue())


def write_columns(group: zarr.Group, path: str, df: pd.DataFrame, dim: str) -> None:
    """``df`` as a group at ``path`` (replaced if present): one array per column, in order (attribute
    ``columns``), each with its pandas type (attribute ``pandas_dtype``) so that reading gives ``df`` back."""
    if path in group:
        del group[path]
    sub = group.create_group(path, attributes={"columns": [str(c) for c in df.columns], "dimension": dim})
    for column in df.columns:
        _write_column(sub, _array_key(str(column)), df[column], dim)


def write_view(group: zarr.Group, records: pd.DataFrame, models: pd.DataFrame) -> None:
    """The tables' columns as root-level arrays (see :func:`view_name`), for plain zarr/xarray readers.

    A column whose stored rows are a prefix of the new one, in the same type, grows in place: the rows of the
    previous snapshot keep their bytes, so a reader of the previous consolidated metadata (shapes pinned) reads
    what it read before. Any other column is written anew (see docs/format.md on this window)."""
    wanted = {view_name("records", str(c)): ("record", records[c]) for c in records.columns}
    wanted.update({view_name("models", str(c)): ("model", models[c]) for c in models.columns})
    for key, meta in _nodes(group.store, depth=1).items():
        if meta.get("node_type") == "array" and key not in (WEIGHTS, FILTER_ID) and key not in wanted:
            del group[key]
    for key, (dim, series) in wanted.items():
        if key in group and _grow(group[key], series):
            continue
        if key in group:
            del group[key]
        _write_column(group, key, series, dim)


def _grow(array: zarr.Array, series: pd.Series) -> bool:
    """Append the rows of ``series`` past ``array``'s to it when its rows are a prefix of ``series`` in the same
    encoding; False (nothing written) otherwise."""
    values, fill, attrs = encode_column(series)
    n_old = array.shape[0]
    if array.dtype != values.dtype or len(values) < n_old:
        return False
    try:
        stored = read_rows(array)
    except AbsentChunk:             # rows a killed append resized in but never wrote: write the column anew
        return False
    if not pd.Series(stored).equals(pd.Series(values[:n_old])):
        return False
    old_fill = array.fill_value
    if not (old_fill == fill or (isinstance(fill, float) and np.isnan(fill) and np.isnan(old_fill))):
        return False
    if len(values) > n_old:
        array = array.with_config(WRITE_ALL)
        array.resize((len(values),))
        array[n_old:] = values[n_old:]
    attrs["column"] = str(series.name)
    if array.attrs.asdict() != attrs:
        array.attrs.put(attrs)
    return True


#: Rows per chunk of a table column (a table of a few rows costs a few bytes: the padding compresses away).
TABLE_CHUNK = 1 << 14


def _array_key(column: str) -> str:
    """A column's array name: the column name, unless Zarr does not allow it as a node name."""
    if "/" in column or column.startswith("__") or column.strip(".") == "" or column == "zarr.json":
        return "column_" + column.encode().hex()
    return column


def _write_column(group: zarr.Group, key: str, series: pd.Series, dim: str) -> None:
    values, fill, attrs = encode_column(series)
    attrs["column"] = str(series.name)
    n = len(values)
    array = group.create_array(key, shape=(n,), chunks=(TABLE_CHUNK,), dtype=values.dtype, fill_value=fill,
                               dimension_names=(dim,), attributes=attrs, config=WRITE_ALL)
    if n:
        array[:] = values


def encode_column(series: pd.Series) -> tuple[np.ndarray, object, dict]:
    """``(values, zarr fill value, attributes)`` of a table column (see docs/format.md, "Column types").

    Numbers and booleans are stored as they are (NaN marks a missing float). A nullable integer (``Int64``)
    stores a missing value as the smallest value of its type, named by the CF attribute ``_FillValue`` (xarray
    masks it). Strings are variable-length UTF-8; a missing string is stored as "" and its row is listed in the
    attribute ``missing_rows`` (xarray cannot mask strings)."""
    dtype = series.dtype
    attrs: dict = {"pandas_dtype": str(dtype)}
    if isinstance(dtype, pd.StringDtype) or pd.api.types.is_object_dtype(dtype) or \
            isinstance(dtype, pd.CategoricalDtype):
        if isinstance(dtype, pd.StringDtype):
            attrs["pandas_storage"] = dtype.storage
        raw = series.astype(object).tolist()
        missing = [i for i, v in enumerate(raw) if is_missing(v)]
        if missing:
            attrs[MISSING_ROWS] = missing
        values = np.array(["" if is_missing(v) else str(v) for v in raw], dtype=np.dtypes.StringDType())
        return values, "", attrs
    if pd.api.types.is_extension_array_dtype(dtype) and pd.api.types.is_integer_dtype(dtype):
        np_dtype = np.dtype(dtype.numpy_dtype)
        sentinel = int(np.iinfo(np_dtype).min)
        present = series.dropna().to_numpy(np_dtype)
        if (present == sentinel).any():
            raise StoreError(f"column {series.name!r} holds {sentinel}, the value that marks a missing "
                             "integer in the store; store the column as float or string.")
        attrs["_FillValue"] = sentinel
        return series.to_numpy(np_dtype, na_value=sentinel), sentinel, attrs
    if isinstance(dtype, pd.BooleanDtype):
        attrs["_FillValue"] = -1
        return series.astype("Int8").to_numpy(np.int8, na_value=-1), -1, attrs
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        fill = np.nan if dtype.kind == "f" else (False if dtype.kind == "b" else 0)
        return series.to_numpy(dtype), fill, attrs
    raise StoreError(f"column {series.name!r} has type {dtype}, which a schema-2 store does not hold (numbers, "
                     "booleans and strings); convert the column first.")


def decode_column(array: zarr.Array, values: np.ndarray | None = None) -> pd.Series:
    """The pandas column :func:`encode_column` stored (``values``: its rows, already read)."""
    return _decode(array.attrs.asdict(), array[:] if values is None else values, array.basename)


def _decode(attrs: dict, values: np.ndarray, basename: str) -> pd.Series:
    """:func:`decode_column` of a column's attributes and values, already read."""
    kind = attrs.get("pandas_dtype", str(values.dtype))
    name = attrs.get("column", basename)
    if MISSING_ROWS in attrs or values.dtype.kind in "OTU":
        out = np.asarray(values, dtype=object)
        out[[i for i in attrs.get(MISSING_ROWS, []) if i < len(out)]] = None
        if kind == "category":
            return pd.Series(pd.Categorical(out), name=name)
        if kind in ("str", "string"):
            na = pd.NA if kind == "string" else np.nan
            return pd.Series(pd.array(out, dtype=pd.StringDtype(attrs.get("pandas_storage", "python"),
                                                                 na_value=na)), name=name)
        return pd.Series(out, name=name, dtype=kind)
    if "_FillValue" in attrs:
        out = pd.Series(values, name=name).astype(object)
        out[values == attrs["_FillValue"]] = None
        return out.astype(kind)
    return pd.Series(values, name=name).astype(kind)


class AbsentChunk(Exception):
    """A chunk key with no stored object (zarr itself would read the fill value there)."""


class StrictChunks(zarr.storage.WrapperStore):
    """A read-only store wrapper that raises :class:`AbsentChunk` for a missing key under ``prefix`` (chunks of the
    arrays there) instead of returning None, which zarr turns into the fill value. Absence is seen in the GET that
    reads the chunk: no listing request."""

    def __init__(self, store, prefix: str):
        super().__init__(store)
        self.prefix = prefix

    def _with_store(self, store):
        return type(self)(store, self.prefix)

    async def get(self, key, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        if value is None and key.startswith(self.prefix) and not key.endswith("zarr.json"):
            raise AbsentChunk(key)
        return value


def read_rows(array: zarr.Array, n: int | None = None) -> np.ndarray:
    """``array[:n]`` read through :class:`StrictChunks`: raises :class:`AbsentChunk` for an absent chunk among those
    rows (zarr alone would read the fill value). Chunks past row ``n`` are not read, so rows a killed append
    resized in but never wrote (past the committed snapshot) are not an error here."""
    strict = zarr.open_array(store=StrictChunks(array.store, f"{array.path}/"), path=array.path, mode="r",
                             zarr_format=3)
    return strict[:array.shape[0] if n is None else n]


def read_columns(group: zarr.Group, where: str = "") -> pd.DataFrame:
    """The DataFrame :func:`write_columns` stored in ``group`` (opened on a :class:`StrictChunks` store: schema 2
    writes every chunk of a table column, so an absent one is damage, not fill values).

    The columns are read concurrently (one round of requests, not one per column): on object storage a table of 60
    columns otherwise costs 60 sequential round trips at every open."""
    columns = group.attrs.asdict().get("columns", [])
    read = zarr_sync(_read_arrays(group._async_group, [_array_key(c) for c in columns]))
    for c, (_, _, _, missing) in zip(columns, read):
        if missing:
            prefix = f"{where}: " if where else ""
            raise StoreError(f"{prefix}table {group.path}: column {c!r} has a chunk missing ({missing}; zarr would "
                             "read fill values there); the store is damaged. Run `filtershift verify` and restore "
                             "the store from a copy or convert it again.")
    data = {c: _decode(attrs, values, basename).rename(None) for c, (attrs, values, basename, _) in zip(columns, read)}
    return pd.DataFrame(data, columns=columns) if data else pd.DataFrame(columns=columns)


async def _read_arrays(group, keys: list[str]) -> list[tuple[dict, np.ndarray | None, str, str | None]]:
    """(attributes, values, basename, key of an absent chunk or None) of the arrays ``keys`` of an async Zarr
    group, read concurrently."""
    async def values(array):
        try:
            return await array.getitem(slice(None)), None
        except AbsentChunk as exc:
            return None, str(exc)

    arrays = await asyncio.gather(*(group.getitem(key) for key in keys))
    read = await asyncio.gather(*(values(array) for array in arrays))
    return [(dict(array.attrs), value, array.basename, absent) for array, (value, absent) in zip(arrays, read)]


def _table_group(loc: Location, path: str) -> zarr.Group:
    """The table group ``path`` on a :class:`StrictChunks` store, its columns' metadata taken from the root's
    consolidated metadata when that lists it (schema 2 writes it with each commit's manifest and never rewrites a
    committed table, so the listing is exact and saves one request per column); KeyError when it is missing."""
    store = StrictChunks(loc.zarr_store(read_only=True), "tables/")
    with remote_errors(loc, "open"):
        try:
            return zarr.open_group(store=store, mode="r", zarr_format=3, use_consolidated=True)[path]
        except (KeyError, ValueError, FileNotFoundError, zarr.errors.GroupNotFoundError):
            pass
        try:
            return zarr.open_group(store=store, path=path, mode="r", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise KeyError(path) from None


def read_table(loc: Location, name: str, version: int, *, schema: int | None = None,
               group: zarr.Group | None = None) -> pd.DataFrame:
    """One table of a version: a Parquet file (schema 1) or a Zarr group of columns (schema 2; ``schema`` None:
    the manifest says which)."""
    if schema is None:
        schema = schema_of(loc)
    if schema >= 2:
        path = table_group(name, version)
        try:
            table = _table_group(loc, path)
        except KeyError:
            found = table_versions(group if group is not None else open_group(loc, "r"))
            raise StoreError(f"{loc.display}: table {path} of the manifest's version {version} is missing "
                             f"(table versions present: {', '.join(found) or 'none'}); the store is damaged. Run "
                             "`filtershift verify` and restore the store from a copy or convert again.") from None
        with remote_errors(loc, "read"):
            return read_columns(table, loc.display)
    fs, _ = loc.fs()
    path = fsspec.core.url_to_fs(table_path(loc, name, version), **loc.storage_options)[1]
    try:
        with fs.open(path, "rb") as f:
            return pd.read_parquet(f)
    except FileNotFoundError:
        try:
            found = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(path.rsplit("/", 1)[0] + f"/{name}-v*.parquet"))
        except OSError:
            found = []
        raise StoreError(f"{loc.display}: table {name}-v{version}.parquet of the manifest's version {version} is "
                         f"missing (tables present: {', '.join(found) or 'none'}); the store is damaged. Run "
                         "`filtershift verify` and restore the store from a copy or convert again.") from None


def prune_tables(group: zarr.Group, keep: int) -> int:
    """Remove schema-2 table versions older than ``keep - 1`` (the previous version stays for readers that read
    the manifest just before the last commit); returns how many were removed. The caller writes the manifest
    again, so that the consolidated metadata no longer lists them."""
    old = [key for key in table_versions(group) if int(key[1:]) < keep - 1]
    for key in old:
        del group[f"{TABLES}/{key}"]
    return len(old)


def table_versions(group: zarr.Group) -> list[str]:
    """The schema-2 table versions in the store (``v1``, ``v2``, ...), oldest first."""
    keys = [p.rsplit("/", 1)[-1] for p, m in _nodes(group.store, f"{TABLES}/", depth=1).items()
            if m.get("node_type") == "group"]
    return sorted((k for k in keys if re.fullmatch(r"v\d+", k)), key=lambda k: int(k[1:]))


def weights_for_writing(group: zarr.Group, name: str = WEIGHTS) -> zarr.Array:
    """An array opened for writing. Schema 2 (attribute ``all_chunks_written``): every chunk is written, all-zero
    ones too, since its readers take an absent chunk for an error; zarr's default skips a chunk equal to the fill
    value, which schema 1 keeps."""
    array = group[name]
    return array.with_config(WRITE_ALL) if array.attrs.get(ALL_CHUNKS_WRITTEN) else array


def array_attributes(schema: int) -> dict:
    """Attributes of ``weights`` and ``filter_id`` when they are created."""
    return {ALL_CHUNKS_WRITTEN: True} if schema >= 2 else {}


def commit_tables(loc: Location, group: zarr.Group, manifest: dict, records: pd.DataFrame,
                  models: pd.DataFrame) -> None:
    """Write the tables of ``manifest["version"]``, then the manifest (the commit), in the store's schema.

    Schema 2: the versioned tables, then the root view of them, then the manifest with the consolidated metadata
    in one write. A crash before that write leaves the previous snapshot: filtershift reads the version its
    manifest names, and ``xr.open_zarr`` the consolidated metadata of the previous commit. Table versions older
    than the previous one are removed after the commit."""
    schema, version = int(manifest["schema_version"]), int(manifest["version"])
    write_table(loc, "records", version, records, schema=schema, group=group)
    write_table(loc, "models", version, models, schema=schema, group=group)
    if schema >= 2:
        write_view(group, records, models)
    write_manifest(group, manifest)
    if schema >= 2 and prune_tables(group, version):
        write_manifest(group, manifest)


def snake_case(column: str) -> str:
    """Coordinate name of a meta column: 'Visual Category' -> 'visual_category'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(column)).strip("_").lower()


def resolve_name(key: str, names: dict, present, fixed=()) -> str:
    """The grouping a user's key names: the key itself, the coordinate of an original meta column
    ('Visual Category' -> 'visual_category'), or the key in snake_case; ``InputError`` naming the choices otherwise.

    ``names`` maps grouping coordinates to their original columns, ``present`` holds the names that exist (a
    Dataset's coordinates, per-record variables) and ``fixed`` the keys taken as they are (offered in the error with
    ``names``). The one resolver of the store's Datasets and the statistics' per-record meta.
    """
    if key in fixed or key in present:
        return key
    for name, column in names.items():
        if column == key:
            return name
    if snake_case(key) in present:
        return snake_case(key)
    raise InputError(f"unknown grouping {key!r}; choose one of {sorted(set(names) | set(fixed))} (or the original "
                     "column names).")


#: Meta columns that never become grouping coordinates (free text, URLs, ids, hashes).
NOT_GROUPING = {"filter_ids", "Dataset URL", "weights_sha256", "source", "model_id"}
#: Column aliases: the v0.1 data set calls the visual category 'Datatype'.
COLUMN_ALIASES = {"Datatype": "visual_category"}
RESERVED_COORDS = {"record", "model_id", "conv_depth", "conv_depth_norm", "filter_id", "weights", "k",
                   "filter", "layer"}


def grouping_columns(models: pd.DataFrame) -> dict[str, str]:
    """Coordinate name -> models column for every label-like column of the models table: text, categories and
    bools (a flag such as ``Robust`` groups models in two, labels ``True`` / ``False``), and ``op_set``. Other
    numeric columns (counts, accuracies) are covariates, never groupings."""
    out: dict[str, str] = {}
    for column in models.columns:
        if column in NOT_GROUPING:
            continue
        series = models[column]
        is_label = (pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series)
                    or isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series)
                    or column == "op_set")
        if not is_label:
            continue
        name = COLUMN_ALIASES.get(column, snake_case(column))
        if not name or name in RESERVED_COORDS or name in out:
            continue
        out[name] = column
    return out


#: The label of a missing meta value in a grouping coordinate. When the column also holds this label as a real value,
#: the missing ones get it with " (missing)" appended, so that the two never merge.
MISSING_LABEL = "unknown"


def clean_labels(values: pd.Series, column: str, rules) -> tuple[pd.Series, str | None]:
    """Labels for grouping and the label that stands for a missing value (None when no value is missing).

    A rule maps every label containing ``contains`` to ``value``; rules never touch a missing value, which becomes
    :data:`MISSING_LABEL` (with " (missing)" appended while that is a real label of the column). The tables keep
    missing values as missing (docs/format.md), so which labels stand for a missing value is known from them."""
    labels = [None if is_missing(v) else str(v) for v in values.tolist()]
    for rule in rules:
        if rule.get("column") not in (column, COLUMN_ALIASES.get(column, column)):
            continue
        needle, value = str(rule["contains"]), str(rule["value"])
        labels = [value if v is not None and needle in v else v for v in labels]
    missing = None
    if any(v is None for v in labels):
        present = set(labels)
        missing = MISSING_LABEL
        while missing in present:
            missing += " (missing)"
    return pd.Series([missing if v is None else v for v in labels], index=values.index, dtype=object), missing


def apply_label_rules(values: pd.Series, column: str, rules) -> pd.Series:
    """Clean raw labels for grouping (:func:`clean_labels` without the missing label)."""
    return clean_labels(values, column, rules)[0]


def is_missing(value) -> bool:
    """True for None, NaN and pd.NA (a missing meta value)."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def vocabulary_codes(labels: pd.Series) -> tuple[list[str], np.ndarray]:
    vocab = sorted(set(labels))
    index = {v: i for i, v in enumerate(vocab)}
    return vocab, labels.map(index).to_numpy(dtype=np.int32)


def vocabularies(models: pd.DataFrame, rules) -> dict[str, list[str]]:
    return {name: vocabulary_codes(apply_label_rules(models[col], col, rules))[0]
            for name, col in grouping_columns(models).items()}
