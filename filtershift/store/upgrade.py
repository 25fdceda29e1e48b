"""Migrate a schema-1 store to schema 2 in place (``filtershift upgrade STORE``), atomically and resumably.

The steps, each idempotent, in this order (docs/format.md, "Upgrading a schema-1 store"):

1. check every chunk of ``weights`` holding committed rows: present, or absent with a recorded sum of exactly
   0.0 (zarr did not write an all-zero chunk; schema-1 readers read it as zeros); any other absent chunk is damage,
   refused before anything is written;
2. write those absent all-zero chunks (schema-2 readers take an absent chunk for an error), then mark ``weights``
   (and ``filter_id``) ``all_chunks_written``;
3. write the manifest's version of the tables as Zarr groups, ``tables/v{K}/records`` and ``tables/v{K}/models``,
   and their root-level view;
4. commit: the manifest with ``schema_version`` 2 and the consolidated metadata, in one write;
5. remove the schema-1 Parquet tables.

Until step 4 the store is a schema-1 store that every reader opens as before (nothing it reads has changed: the
written chunks hold the zeros it read in their place); from step 4 it is a schema-2 store. A kill at any point
leaves one or the other, and running the upgrade again finishes it. No weight chunk is rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filtershift import progress
from filtershift._version import __version__
from filtershift.errors import StoreError
from filtershift.store import format as fmt
from filtershift.store.append import writer_lock
from filtershift.store.verify import check_schema2, check_tables

#: The points between steps, in order, where tests interrupt an upgrade (``_hook``).
STEPS = ("checked", "materialised", "marked", "tables", "view", "committed", "cleaned")


@dataclass
class UpgradeResult:
    """What :func:`upgrade` did."""

    store: str
    upgraded: bool              # False: the store was already schema 2 (leftovers of an interrupted run cleaned)
    version: int
    chunks_written: int         # absent all-zero chunks materialised
    tables_removed: int         # schema-1 Parquet files removed
    view_repaired: list[str] = field(default_factory=list)    # schema 2: what differed in the plain view

    def message(self) -> str:
        if not self.upgraded:
            extra = f"; removed {self.tables_removed} schema-1 table file(s) left by an interrupted upgrade" \
                if self.tables_removed else ""
            if self.view_repaired:
                extra += (f"; rewrote the root-level tables and consolidated metadata, which differed from version "
                          f"{self.version} ({'; '.join(self.view_repaired)})")
            return f"{self.store}: already schema {fmt.SCHEMA_VERSION} (version {self.version}){extra}."
        return (f"{self.store}: upgraded to schema {fmt.SCHEMA_VERSION} (version {self.version}); wrote "
                f"{self.chunks_written} all-zero chunk(s) that zarr had not written; removed "
                f"{self.tables_removed} schema-1 table file(s).")


def upgrade(path_or_url, *, storage_options: dict | None = None, lock_timeout: float = 0.0,
            _hook=None) -> UpgradeResult:
    """Upgrade the store at ``path_or_url`` to schema 2 (see the module docstring); a schema-2 store is left as it
    is, apart from removing what an interrupted upgrade left. ``_hook(step)`` is called after each step of
    :data:`STEPS` (tests interrupt the upgrade there)."""
    hook = _hook or (lambda step: None)
    loc = fmt.Location.of(path_or_url, storage_options, write=True)
    with fmt.remote_errors(loc, "upgrade"):
        group = fmt.open_group(loc, "r+")
        fmt.read_manifest(group, loc)                    # an incomplete store is refused with its remedy
        with writer_lock(loc, timeout=lock_timeout):
            manifest = fmt.read_manifest(group, loc)
            version = int(manifest["version"])
            if int(manifest["schema_version"]) >= 2:
                removed = _remove_parquet(loc)
                return UpgradeResult(loc.display, False, version, 0, removed, _repair_view(loc, group, manifest))
            records = fmt.read_table(loc, "records", version, schema=1)
            models = fmt.read_table(loc, "models", version, schema=1)
            problems = check_tables(records, models, manifest)
            if problems:
                raise StoreError(f"{loc.display}: the tables of version {version} do not match the manifest: "
                                 f"{'; '.join(problems)}; nothing was changed. Run `filtershift verify`, restore the "
                                 "store from a copy or convert it again, then upgrade.")
            absent = _absent_chunks(loc, group, manifest)
            hook("checked")
            written = _materialise(group, manifest, absent)
            hook("materialised")
            for name in (fmt.WEIGHTS, fmt.FILTER_ID) if manifest.get("reordered") else (fmt.WEIGHTS,):
                group[name].attrs.update(fmt.array_attributes(2))
            hook("marked")
            fmt.write_table(loc, "records", version, records, schema=2, group=group)
            fmt.write_table(loc, "models", version, models, schema=2, group=group)
            hook("tables")
            fmt.write_view(group, records, models)
            hook("view")
            manifest["schema_version"] = 2
            manifest.setdefault("upgrades", []).append({
                "from_schema": 1, "to_schema": 2, "chunks_written": written,
                "converter": f"filtershift {__version__}", "time": fmt.utc_now()})
            fmt.write_manifest(group, manifest)
            hook("committed")
            removed = _remove_parquet(loc)
            hook("cleaned")
    return UpgradeResult(loc.display, True, version, written, removed)


def _repair_view(loc: fmt.Location, group, manifest: dict) -> list[str]:
    """Schema 2: write the root-level tables and the consolidated metadata again when they differ from the
    committed version (verify's finding after a write outside filtershift); returns what differed."""
    version = int(manifest["version"])
    records = fmt.read_table(loc, "records", version, schema=2, group=group)
    models = fmt.read_table(loc, "models", version, schema=2, group=group)
    problems = [p for p in check_schema2(group, records, models, manifest)
                if p.startswith(("root array", "the consolidated"))]
    if problems:
        fmt.write_view(group, records, models)
        fmt.write_manifest(group, manifest)
    return problems


def _absent_chunks(loc: fmt.Location, group, manifest: dict) -> list[int]:
    """Chunks of committed rows with no stored object: those of ``weights`` with a recorded sum of exactly 0.0
    (returned, to be written); any other is damage, refused before anything is written."""
    from zarr.core.sync import sync

    n, chunk = int(manifest["n_filters"]), int(manifest["chunk_filters"])
    n_chunks = -(-n // chunk)
    sums = (manifest.get("integrity") or {}).get("chunk_sums") or []
    remedy = ("the store is damaged; nothing was changed. Run `filtershift verify`, restore the store from a copy "
              "or convert it again, then upgrade.")
    if len(sums) != n_chunks:
        raise StoreError(f"{loc.display}: the manifest records {len(sums)} chunk sums for {n_chunks} chunks; {remedy}")
    found = []
    for name in (fmt.WEIGHTS, fmt.FILTER_ID) if manifest.get("reordered") else (fmt.WEIGHTS,):
        if name not in group:
            raise StoreError(f"{loc.display}: the array '{name}' is missing; {remedy}")
        array = group[name]
        if array.shape[0] < n or array.chunks[0] != chunk:
            raise StoreError(f"{loc.display}: the array '{name}' has shape {array.shape} in chunks of "
                             f"{array.chunks[0]} rows, the manifest says {n} filters in chunks of {chunk}; {remedy}")

        async def listing(prefix):
            return {key async for key in group.store.list_prefix(prefix)}

        stored = sync(listing(f"{name}/"))
        with progress.bar(total=n_chunks, desc=f"upgrade: check {name} chunks", unit="chunk") as pbar:
            for i in range(n_chunks):
                key = f"{name}/" + array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))
                if key not in stored:
                    if name != fmt.WEIGHTS or float(sums[i]) != 0.0:
                        lo, hi = i * chunk, min((i + 1) * chunk, n)
                        raise StoreError(f"{loc.display}: array '{name}' chunk {i} (filters {lo}:{hi}) is missing, "
                                         f"but the manifest says those filters were written; {remedy}")
                    found.append(i)
                pbar.update(1)
    return found


def _materialise(group, manifest: dict, chunks: list[int]) -> int:
    """Write the absent all-zero chunks of ``weights`` as zeros (what schema-1 readers read in their place)."""
    n, rows = int(manifest["n_filters"]), int(manifest["chunk_filters"])
    weights = group[fmt.WEIGHTS].with_config(fmt.WRITE_ALL)
    with progress.bar(total=len(chunks), desc="upgrade: write all-zero chunks", unit="chunk") as pbar:
        for i in chunks:
            lo, hi = i * rows, min((i + 1) * rows, n)
            weights[lo:hi] = np.zeros((hi - lo, 9), np.float32)
            pbar.update(1)
    return len(chunks)


def _remove_parquet(loc: fmt.Location) -> int:
    """Remove schema-1 table files (``tables/*.parquet``, and temporary ones); returns how many."""
    fs, root = loc.fs()
    files = [p for p in fs.glob(f"{root}/{fmt.TABLES}/*.parquet*")]
    for path in files:
        fs.rm(path)
    return len(files)
