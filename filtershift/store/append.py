"""Grow a store with trained models, atomically at model granularity.

An append writes the new model's rows past the committed ``n_filters`` (invisible to readers, who never look
past it), writes the next version of the tables, and only then commits the manifest in one atomic write. The
last partial chunk is rewritten whole; its committed rows keep their values and chunk writes are atomic, so a
concurrent reader sees the snapshot before the model or after it, never half of one. A crash leaves the store
at its previous snapshot: running the same append again completes it. A model whose weights' SHA-256 is
already in the store is skipped with a message. One writer at a time: a lock file guards the store.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr

from filtershift import progress
from filtershift._version import __version__
from filtershift.errors import InputError, StoreError
from filtershift.store import format as fmt
from filtershift.store.convert import compressors
from filtershift.store.dataset import normalise_models, normalise_records

LOCK_FILE = ".filtershift-lock"


@dataclass
class AppendResult:
    """What :func:`add_models` did: model ids added, and the sources skipped as already present."""

    added: list[int]
    skipped: list[str]
    n_filters: int
    version: int


def create_empty(dst, *, chunk_filters: int | None = None, codec: str = fmt.DEFAULT_CODEC,
                 storage_options: dict | None = None, schema: int = fmt.SCHEMA_VERSION) -> None:
    """A complete store with no filters, ready for :func:`add_models` (``schema``: see docs/format.md)."""
    loc = fmt.Location.of(dst, storage_options)
    fs, root = loc.fs()
    if fs.exists(f"{root}/zarr.json") and _state(loc) != "creating":
        raise StoreError(f"{loc.display}: a store already exists here.")
    chunk = int(chunk_filters or fmt.DEFAULT_CHUNK_FILTERS)
    group = zarr.open_group(store=loc.zarr_store(read_only=False), mode="w", zarr_format=3,
                            attributes={fmt.MANIFEST_KEY: fmt.new_manifest(chunk, codec, "creating", schema)})
    group.create_array(fmt.WEIGHTS, shape=(0, 9), chunks=(chunk, 9), dtype="float32",
                       compressors=compressors(codec), fill_value=0.0, dimension_names=("filter", "k"),
                       attributes=fmt.array_attributes(schema))
    empty_records = normalise_records(pd.DataFrame({"model_id": pd.Series([], dtype="int64"),
                                                    "conv_depth": pd.Series([], dtype="int32"),
                                                    "n": pd.Series([], dtype="int64")}))
    empty_models = pd.DataFrame({"model_id": pd.Series([], dtype="int64"), "n_filters": pd.Series([], dtype="int64"),
                                 "weights_sha256": pd.Series([], dtype="string")})
    manifest = fmt.new_manifest(chunk, codec, "complete", schema)
    manifest["version"] = 1
    fmt.commit_tables(loc, group, manifest, empty_records, empty_models)


def _state(loc: fmt.Location) -> str | None:
    """The manifest state of the store at ``loc`` (``"creating"`` when a creation was interrupted)."""
    manifest = fmt.open_group(loc, "r").attrs.asdict().get(fmt.MANIFEST_KEY) or {}
    return manifest.get("state")


@contextmanager
def writer_lock(loc: fmt.Location, timeout: float = 0.0):
    """Exclusive writer lock: a file created with O_EXCL (local) or a conditional put (object stores)."""
    fs, root = loc.fs()
    path = f"{root}/{LOCK_FILE}"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": fmt.utc_now()}
    deadline = time.monotonic() + timeout
    while True:
        try:
            if loc.is_local:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            else:
                fs.pipe_file(path, json.dumps(me).encode(), mode="create")
            break
        except (FileExistsError, OSError) as exc:
            if not isinstance(exc, FileExistsError) and loc.is_local:
                raise
            holder = _stale_holder(fs, path)
            if holder == "stale":
                fs.rm(path)
                continue
            if time.monotonic() >= deadline:
                raise StoreError(f"{loc.display}: another writer holds the store ({holder}); wait for it to "
                                 f"finish, or if it died, remove {LOCK_FILE} in the store.") from None
            time.sleep(0.1)
    try:
        yield
    finally:
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def _stale_holder(fs, path: str) -> str:
    try:
        info = json.loads(fs.cat_file(path))
    except (OSError, ValueError):
        return "unknown holder"
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except ProcessLookupError:
            return "stale"
        except (PermissionError, ValueError, KeyError):
            pass
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('time')}"


def add_models(store, models, *, meta=None, create: bool = True, storage_options: dict | None = None,
               lock_timeout: float = 0.0) -> AppendResult:
    """Append extracted models to ``store``, one atomic commit per model.

    The models are ``ModelFilters`` from :mod:`filtershift.ingest`. ``meta``: a DataFrame or dict of model meta
    columns (Name, Task, "Visual Category", ...), keyed by the source file name (column ``model`` or ``source``)
    or, for a single model, one dict. A model whose weights' SHA-256 is already in the store is skipped with a
    message.

    Parameters
    ----------
    store : str or os.PathLike
        Store path or fsspec URL.
    models : ModelFilters or list of ModelFilters
        Models read with :func:`~filtershift.read_model`.
    meta : pandas.DataFrame, dict, str or os.PathLike, optional
        Meta columns of the models: a table (or CSV file) with a ``model``, ``source`` or ``file`` column naming
        each model's file, or one dict for a single model.
    create : bool, default True
        Create an empty store when there is none at ``store``.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for a URL.
    lock_timeout : float, default 0.0
        Seconds to wait for the writer lock held by another writer.

    Returns
    -------
    AppendResult
        ``added`` (model ids added), ``skipped`` (sources already present), ``n_filters`` and ``version`` of the
        store after the append.

    Raises
    ------
    filtershift.errors.InputError
        If an item is not a ``ModelFilters``, a model has no 3x3 convolutions or NaN/Inf weights, or ``meta`` is
    malformed.
    filtershift.errors.StoreError
        If there is no store and ``create`` is false, the lock is not obtained in time, or the store cannot be
        written.
    """
    from filtershift.ingest.model import ModelFilters

    loc = fmt.Location.of(store, storage_options, write=True)
    fs, root = loc.fs()
    items = list(models) if isinstance(models, (list, tuple)) else [models]
    for m in items:
        if not isinstance(m, ModelFilters):
            raise InputError(f"add_models takes extracted models (ModelFilters), got {type(m).__name__}; "
                             "read files with filtershift.ingest.read_model(path) first.")
    if not fs.exists(f"{root}/zarr.json") or _state(loc) == "creating":
        if not create:
            raise StoreError(f"{loc.display}: no store here; create it first.")
        create_empty(loc.url, storage_options=storage_options)
    metas = _meta_lookup(meta, items)
    added, skipped = [], []
    with writer_lock(loc, timeout=lock_timeout):
        group = fmt.open_group(loc, "r+")
        for m in items:
            manifest = fmt.read_manifest(group, loc)
            version, schema = manifest["version"], manifest["schema_version"]
            records = fmt.read_table(loc, "records", version, schema=schema, group=group)
            mods = fmt.read_table(loc, "models", version, schema=schema, group=group)
            if m.sha256 in set(mods["weights_sha256"].dropna()):
                existing = int(mods.loc[mods["weights_sha256"] == m.sha256, "model_id"].iloc[0])
                print(f"{m.source}: identical weights already stored as model {existing}; skipped.")
                skipped.append(str(m.source))
                continue
            model_id = int(mods["model_id"].max()) + 1 if len(mods) else 0
            _commit_model(loc, group, manifest, records, mods, m, model_id, metas.get(id(m), {}))
            added.append(model_id)
        final = fmt.read_manifest(group, loc)
        if final["schema_version"] >= 2 and fmt.prune_tables(group, int(final["version"])):
            fmt.write_manifest(group, final)    # a kill after a commit came before its clean-up
    return AppendResult(added, skipped, int(final["n_filters"]), int(final["version"]))


def _meta_lookup(meta, items) -> dict[int, dict]:
    if meta is None:
        return {}
    if isinstance(meta, dict):
        if len(items) != 1:
            raise InputError("a single meta dict needs a single model; give a table with a 'model' column "
                             "naming each model file for several.")
        return {id(items[0]): dict(meta)}
    table = pd.read_csv(meta) if isinstance(meta, (str, os.PathLike)) else pd.DataFrame(meta)
    key = next((c for c in ("model", "source", "file") if c in table.columns), None)
    if key is None:
        raise InputError("the meta table needs a 'model' column with each model's file name.")
    rows = {os.path.basename(str(v)): r.dropna().to_dict() for v, (_, r) in zip(table[key], table.iterrows())}
    out = {}
    for m in items:
        name = os.path.basename(str(m.source))
        if name in rows:
            out[id(m)] = {k: v for k, v in rows[name].items() if k != key}
    return out


def _commit_model(loc, group, manifest, records, mods, m, model_id: int, user_meta: dict) -> None:
    n0 = int(manifest["n_filters"])
    chunk = int(manifest["chunk_filters"])
    filters = np.ascontiguousarray(m.filters(), dtype=np.float32)
    if filters.shape[0] == 0:
        raise InputError(f"{m.source}: the model has no 3x3 convolutions; nothing to add.")
    if not np.isfinite(filters).all():
        raise InputError(f"{m.source}: {int((~np.isfinite(filters)).sum())} NaN/Inf weight value(s); "
                         "refusing to add a model with non-finite weights.")
    n1 = n0 + filters.shape[0]
    weights = fmt.weights_for_writing(group)
    schema = int(manifest["schema_version"])
    if weights.shape[0] < n1 or (schema >= 2 and weights.shape[0] != n1):
        weights.resize((n1, 9))     # schema 2: exactly n1 rows, so plain zarr/xarray readers see no spare rows
    sums = list(manifest["integrity"].get("chunk_sums", []))
    first_chunk = n0 // chunk
    with progress.bar(total=filters.shape[0], desc=f"add {os.path.basename(str(m.source))}",
                      unit="filter", unit_scale=True) as pbar:
        for i in range(first_chunk, -(-n1 // chunk)):
            lo, hi = i * chunk, min((i + 1) * chunk, n1)
            block = np.empty((hi - lo, 9), np.float32)
            keep = max(0, min(n0, hi) - lo)
            if keep:
                block[:keep] = weights[lo:lo + keep]
            block[keep:] = filters[lo + keep - n0:hi - n0]
            weights[lo:hi] = block
            s = float(block.sum(dtype=np.float64))
            sums[i:i + 1] = [s]
            pbar.update(hi - lo - keep)
    new_records = pd.DataFrame([{
        "model_id": model_id, "conv_depth": layer.conv_depth, "conv_depth_norm": layer.conv_depth_norm,
        "layer": layer.name, "in_channels": layer.in_channels, "out_channels": layer.out_channels,
        "groups": layer.groups, "n": layer.weights.shape[0],
    } for layer in m.layers])
    old = records.drop(columns=["record", "start", "stop"])
    all_records = normalise_records(pd.concat([old, new_records], ignore_index=True))
    row = {"model_id": model_id, "model": os.path.basename(str(m.source)), **m.meta, **user_meta,
           "weights_sha256": m.sha256}
    all_models = pd.concat([mods.drop(columns=["n_filters"]), pd.DataFrame([row])], ignore_index=True)
    all_models = normalise_models(_parquet_types(all_models), all_records)
    version = int(manifest["version"]) + 1
    integrity = dict(manifest["integrity"])
    integrity.update({"n_filters": n1, "chunk_sums": sums, "weights_sum": float(np.sum(sums, dtype=np.float64))})
    manifest.update({
        "version": version, "n_filters": n1, "n_records": int(len(all_records)),
        "n_models": int(len(all_models)), "integrity": integrity,
        "vocabularies": fmt.vocabularies(all_models, manifest["label_rules"]),
    })
    manifest["provenance"].append({
        "kind": m.kind, "source": os.path.basename(str(m.source)), "size": _size(m.source),
        "sha256": m.sha256, "model_id": model_id, "converter": f"filtershift {__version__}",
        "time": fmt.utc_now(),
    })
    fmt.commit_tables(loc, group, manifest, all_records, all_models)


def _size(source) -> int | None:
    try:
        return os.path.getsize(source)
    except (OSError, TypeError):
        return None


def _parquet_types(models: pd.DataFrame) -> pd.DataFrame:
    """Mixed old/new model rows: numbers stay numbers, anything else becomes a nullable string."""
    out = models.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            continue
        num = pd.to_numeric(s, errors="coerce")
        if s.notna().any() and num.notna().sum() == s.notna().sum() and not pd.api.types.is_string_dtype(s):
            out[col] = num
        else:
            out[col] = s.map(lambda v: None if fmt.is_missing(v) else str(v)).astype("string")
    return out
