"""Whole-store checks (``filtershift verify``) and the summary of a store (``filtershift info``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from filtershift import progress
from filtershift.errors import StoreError
from filtershift.store import format as fmt
from filtershift.store.chunks import ChunkReader
from filtershift.store.options import storage_options_of


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``ok`` is true when ``problems`` is empty."""

    store: str
    n_filters: int = 0
    n_chunks: int = 0
    chunks_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"store": self.store, "ok": self.ok, "n_filters": self.n_filters, "n_chunks": self.n_chunks,
                "chunks_checked": self.chunks_checked, "problems": list(self.problems)}


def verify(path_or_url, *, storage_options: dict | None = None, **legacy) -> VerifyReport:
    """Check counts, record coverage, and every chunk of a store.

    Each chunk is checked for being present, its checksum, and its float64 sum against the recorded one (within
    the rounding bound of any summation order: machines may sum in different orders).

    Parameters
    ----------
    path_or_url : str or os.PathLike
        Store path or fsspec URL.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for a URL.
    **legacy
        Deprecated: storage options as keyword arguments (a FutureWarning; merged under ``storage_options``).

    Returns
    -------
    VerifyReport
        ``store``, ``n_filters``, ``n_chunks``, ``chunks_checked`` and ``problems`` (one message per problem);
        ``ok`` is true when ``problems`` is empty; ``to_dict()`` gives it as JSON-ready dict.

    Raises
    ------
    filtershift.errors.StoreError
        If the store, its manifest or its tables cannot be opened (damaged chunks are reported in ``problems``).
    """
    loc = fmt.Location.of(path_or_url, storage_options_of(storage_options, legacy, "verify"))
    group = fmt.open_group(loc, "r")
    manifest = fmt.read_manifest(group, loc)
    report = VerifyReport(loc.display, n_filters=manifest["n_filters"])
    schema = int(manifest["schema_version"])
    try:
        records = fmt.read_table(loc, "records", manifest["version"], schema=schema, group=group)
        models = fmt.read_table(loc, "models", manifest["version"], schema=schema, group=group)
    except StoreError as exc:
        report.problems.append(str(exc).split(": ", 1)[-1])
        return report
    report.problems += check_tables(records, models, manifest)
    if schema >= 2:
        report.problems += check_schema2(group, records, models, manifest)
    if fmt.WEIGHTS not in group:
        report.problems.append("the array 'weights' is missing")
        return report
    weights = group[fmt.WEIGHTS]
    n, chunk = manifest["n_filters"], manifest["chunk_filters"]
    if weights.shape[0] < n or weights.shape[1:] != (9,):
        report.problems.append(f"weights has shape {weights.shape}, manifest says {n} filters of 9 values")
        return report
    sums = manifest["integrity"].get("chunk_sums", [])
    report.n_chunks = -(-n // chunk)
    if weights.chunks[0] != chunk:
        report.problems.append(f"weights has chunks of {weights.chunks[0]} rows, manifest says {chunk}")
        return report
    reader = ChunkReader(weights, loc, n, sums if len(sums) == report.n_chunks else None)
    with progress.bar(total=n, desc="verify", unit="filter", unit_scale=True) as pbar:
        for i in range(report.n_chunks):
            lo, hi = i * chunk, min((i + 1) * chunk, n)
            try:
                reader.chunk(i)
            except StoreError as exc:
                report.problems.append(getattr(exc, "problem", str(exc)))
                continue
            report.chunks_checked += 1
            pbar.update(hi - lo)
    if len(sums) != report.n_chunks:
        report.problems.append(f"manifest records {len(sums)} chunk sums for {report.n_chunks} chunks")
    return report


def check_tables(records: pd.DataFrame, models: pd.DataFrame, manifest: dict) -> list[str]:
    """Problems with the tables: counts, exact tiling of [0, n_filters), unknown models."""
    problems = []
    n = manifest["n_filters"]
    if len(records) != manifest["n_records"]:
        problems.append(f"records table has {len(records)} rows, manifest says {manifest['n_records']}")
    if len(models) != manifest["n_models"]:
        problems.append(f"models table has {len(models)} rows, manifest says {manifest['n_models']}")
    start, stop = records["start"].to_numpy(), records["stop"].to_numpy()
    if len(records) and (start[0] != 0 or stop[-1] != n or np.any(start[1:] != stop[:-1])
                         or np.any(stop < start)):
        problems.append(f"records do not tile filters [0, {n}) exactly")
    if not np.array_equal(records["n"].to_numpy(), stop - start):
        problems.append("records column n differs from stop - start")
    unknown = set(records["model_id"]) - set(models["model_id"])
    if unknown:
        problems.append(f"{len(unknown)} model_id(s) in records are missing from models")
    return problems


def check_schema2(group, records: pd.DataFrame, models: pd.DataFrame, manifest: dict) -> list[str]:
    """Schema-2 problems: arrays that do not say every chunk was written, root-level table arrays (what plain
    xarray shows) that differ from the manifest's version of the tables, consolidated metadata of another
    snapshot."""
    problems = []
    arrays = (fmt.WEIGHTS, fmt.FILTER_ID) if manifest.get("reordered") else (fmt.WEIGHTS,)
    for name in arrays:
        if name in group and not group[name].attrs.get(fmt.ALL_CHUNKS_WRITTEN):
            problems.append(f"array '{name}' lacks the attribute {fmt.ALL_CHUNKS_WRITTEN} of schema 2 (an absent "
                            "chunk could not be told from an all-zero one)")
    consolidated = (fmt.root_document(group).get("consolidated_metadata") or {}).get("metadata") or {}
    for table, df in (("records", records), ("models", models)):
        for column in df.columns:
            key = fmt.view_name(table, str(column))
            if key not in group:
                problems.append(f"root array '{key}' (column {column!r} of the {table} table) is missing")
                continue
            array = group[key]
            # rows past the table's (a running or killed append) are not part of the snapshot, as for weights
            try:
                rows = fmt.read_rows(array, min(len(df), array.shape[0]))
            except fmt.AbsentChunk as exc:
                problems.append(f"root array '{key}' (column {column!r} of the {table} table) has a chunk missing "
                                f"({exc}): plain xarray reads fill values there; run `filtershift upgrade` on the "
                                "store to write it again")
                continue
            got = fmt.decode_column(array, rows).reset_index(drop=True)
            want = df[column].reset_index(drop=True)
            listed = (consolidated.get(key) or {}).get("shape")
            if got.dtype != want.dtype or not got.equals(want) or listed != [len(df)]:
                problems.append(f"root array '{key}' differs from column {column!r} of the {table} table of "
                                f"version {manifest['version']} (what xr.open_zarr shows); run the append that "
                                "was interrupted again, or `filtershift upgrade` to rewrite it")
    shape = (consolidated.get(fmt.WEIGHTS) or {}).get("shape")
    if shape is None or shape[0] != manifest["n_filters"]:
        problems.append("the consolidated metadata (what xr.open_zarr reads) does not describe the committed "
                        "snapshot; run `filtershift upgrade` on the store to write it again")
    return problems


def info(path_or_url, *, storage_options: dict | None = None, **legacy) -> dict:
    """Counts, filters and models per task and visual category, and provenance of a store."""
    loc = fmt.Location.of(path_or_url, storage_options_of(storage_options, legacy, "info"))
    group = fmt.open_group(loc, "r")
    manifest = fmt.read_manifest(group, loc)
    models = fmt.read_table(loc, "models", manifest["version"])
    rules = manifest.get("label_rules", fmt.DEFAULT_LABEL_RULES)
    per: dict[str, dict] = {}
    columns = fmt.grouping_columns(models)
    for name in ("task", "visual_category", "training_dataset"):
        if name not in columns:
            continue
        column = columns[name]
        labels = fmt.apply_label_rules(models[column], column, rules)
        filters = models["n_filters"].groupby(labels.to_numpy()).sum()
        counts = labels.value_counts()
        per[name] = {str(k): {"n_models": int(counts[k]), "n_filters": int(filters[k])} for k in sorted(counts.index)}
    if "weights" not in group:
        raise StoreError(f"{loc.display}: the weights array is missing; the store is damaged.")
    return {
        "store": loc.display,
        "schema_version": manifest["schema_version"],
        "version": manifest["version"],
        "n_filters": int(manifest["n_filters"]),
        "n_models": int(manifest["n_models"]),
        "n_records": int(manifest["n_records"]),
        "chunk_filters": int(manifest["chunk_filters"]),
        "codec": manifest["codec"],
        "reordered": bool(manifest.get("reordered")),
        "n_nonfinite": int(manifest["integrity"].get("n_nonfinite", 0)),
        "groups": per,
        "provenance": manifest["provenance"],
    }
