"""``dataset.h5`` → filtershift store, streaming, resumable, validated before it is marked complete.

Memory is one output chunk plus one source slab at a time, whatever N is. Progress (chunks written and their
float64 sums) goes to a small JSON file written atomically after every chunk; ``resume=True`` continues from it.
Writing a chunk is idempotent (same source → same bytes), so a chunk half-written at a kill is simply written
again. The store stays in state ``converting`` (and refuses to open) until every chunk has been read back,
checksum-verified and summed to the recorded value.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from filtershift import progress
from filtershift._version import __version__
from filtershift.errors import InputError, StoreError
from filtershift.ingest.h5 import Source, open_source
from filtershift.store import format as fmt
from filtershift.store.dataset import normalise_models, normalise_records

NONFINITE_POLICIES = ("error", "zero", "keep")


def compressors(codec: str) -> list:
    """Bytes-to-bytes codecs of ``weights``: the compressor, then always a crc32c checksum."""
    if codec not in fmt.CODECS:
        raise InputError(f"codec {codec!r} is not one of {list(fmt.CODECS)}.")
    head = {"none": [], "zstd": [ZstdCodec(level=1)],
            "lz4": [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=4)]}[codec]
    return [*head, Crc32cCodec()]


def convert(src, dst, *, chunk_filters: int | None = None, codec: str = fmt.DEFAULT_CODEC,
            overwrite: bool = False, resume: bool = False, trust_pickle: bool = False,
            nonfinite: str = "error", storage_options: dict | None = None, provenance_kind: str = "h5") -> str:
    """Convert a CNN-Filter-DB ``dataset.h5`` into a store at ``dst`` (a path or fsspec URL); returns ``dst``.

    ``nonfinite`` says what to do with NaN/Inf filter values: ``error`` (default; nothing is kept),
    ``zero`` (replace by 0) or ``keep``; their count is recorded in the manifest either way.
    ``provenance_kind`` names the source in the provenance entry (``"synth"`` for generated data).
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise InputError(f"nonfinite={nonfinite!r}; choose one of {list(NONFINITE_POLICIES)}.")
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other: resume keeps the work done so far.")
    chunk = int(chunk_filters or fmt.DEFAULT_CHUNK_FILTERS)
    if chunk < 1:
        raise InputError(f"chunk_filters must be positive, got {chunk}.")
    source = open_source(src, trust_pickle=trust_pickle)
    loc = fmt.Location.of(dst, storage_options, write=True)
    identity = _source_identity(source.path)
    settings = {"chunk_filters": chunk, "codec": codec, "nonfinite": nonfinite}
    with fmt.remote_errors(loc, "write"):
        state = _prepare_destination(loc, identity, settings, overwrite=overwrite, resume=resume)
    if state is None:
        return loc.url
    writer = _Writer(loc, source, settings, state, provenance_kind)
    writer.run()
    return loc.url


def _source_identity(path: str) -> dict:
    st = os.stat(path)
    return {"source": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prepare_destination(loc: fmt.Location, identity: dict, settings: dict, *, overwrite: bool,
                         resume: bool) -> dict | None:
    """Check what is at ``dst``; return the progress state to continue from (None: nothing to do)."""
    fs, root = loc.fs()
    if fs.exists(root):
        is_store = fs.exists(f"{root}/zarr.json")
        manifest = None
        if is_store:
            group = fmt.open_group(loc, "r")
            manifest = group.attrs.asdict().get(fmt.MANIFEST_KEY)
        empty = not is_store and fs.isdir(root) and not fs.ls(root)
        if resume:
            if manifest is None:
                raise StoreError(f"{loc.display}: nothing to resume here (no filtershift store). Run convert "
                                 "without --resume.")
            if manifest.get("state") == "complete":
                print(f"{loc.display}: already complete; nothing to resume.")
                return None
            saved = _read_progress(loc)
            if saved is None:  # killed before the first progress record: nothing to keep, start from chunk 0
                return {"identity": identity, "settings": settings, "done": 0, "chunk_sums": [],
                        "n_nonfinite": 0, "sha256": None}
            if saved.get("identity") != identity or saved.get("settings") != settings:
                raise StoreError(f"{loc.display}: the interrupted conversion was of another source file or "
                                 "with other settings (chunk size, codec, nonfinite policy); resume needs the "
                                 "same ones. Use --overwrite to start again.")
            return saved
        if overwrite:
            if manifest is None and not empty:
                raise StoreError(f"{loc.display}: exists and is not a filtershift store; refusing to delete "
                                 "it. Choose another destination.")
            fs.rm(root, recursive=True)
        elif not empty:
            raise StoreError(f"{loc.display}: already exists. Pass --overwrite to replace it, or --resume to "
                             "finish an interrupted conversion.")
    elif resume:
        raise StoreError(f"{loc.display}: nothing to resume (the destination does not exist). Run convert "
                         "without --resume.")
    return {"identity": identity, "settings": settings, "done": 0, "chunk_sums": [], "n_nonfinite": 0,
            "sha256": None}


def _progress_path(loc: fmt.Location) -> str:
    return loc.join(fmt.PROGRESS_FILE)


def _read_progress(loc: fmt.Location) -> dict | None:
    fs, _ = loc.fs()
    path = fmt.fsspec.core.url_to_fs(_progress_path(loc), **loc.storage_options)[1]
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except (ValueError, OSError):
        return None


def write_json_atomic(loc: fmt.Location, url: str, obj: dict) -> None:
    fs, _ = loc.fs()
    path = fmt.fsspec.core.url_to_fs(url, **loc.storage_options)[1]
    data = json.dumps(obj).encode()
    if loc.is_local:
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


class _Segments:
    """Source slices that make each output row range: output row ``out_start[i] + j`` is source row
    ``src_start[i] + j`` for ``j < length[i]``."""

    def __init__(self, runs: list[list[tuple[int, int]]]):
        src = np.array([a for r in runs for a, _ in r], dtype=np.int64)
        length = np.array([b - a for r in runs for a, b in r], dtype=np.int64)
        self.src_start, self.length = src, length
        self.out_start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)

    def pieces(self, lo: int, hi: int):
        i = max(int(np.searchsorted(self.out_start, lo, side="right")) - 1, 0)
        while i < len(self.out_start) and self.out_start[i] < hi:
            a = max(lo, int(self.out_start[i]))
            b = min(hi, int(self.out_start[i] + self.length[i]))
            if b > a:
                off = a - int(self.out_start[i])
                yield a - lo, b - lo, int(self.src_start[i]) + off, int(self.src_start[i]) + off + (b - a)
            i += 1


class _Writer:
    def __init__(self, loc: fmt.Location, source: Source, settings: dict, state: dict, kind: str = "h5"):
        self.loc, self.source, self.settings, self.state, self.kind = loc, source, settings, state, kind
        self.chunk = settings["chunk_filters"]
        self.n = source.n_filters
        self.n_chunks = -(-self.n // self.chunk)
        self.segments = _Segments(source.runs) if source.reordered else None
        self._sha: str | None = state.get("sha256")
        self._sha_thread: threading.Thread | None = None

    def run(self) -> None:
        if self._sha is None:
            self._sha_thread = threading.Thread(target=self._hash_source, daemon=True)
            self._sha_thread.start()
        group = self._create_or_open()
        self._copy_chunks(group)
        self._validate(group)
        if self._sha_thread is not None:
            self._sha_thread.join()
        self._commit(group)

    def _hash_source(self) -> None:
        h = hashlib.sha256()
        with open(self.source.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        self._sha = h.hexdigest()

    def _create_or_open(self) -> zarr.Group:
        if self._store_exists():
            group = fmt.open_group(self.loc, "r+")
        else:
            manifest = fmt.new_manifest(self.chunk, self.settings["codec"], "converting")
            group = zarr.open_group(store=self.loc.zarr_store(read_only=False), mode="w", zarr_format=3,
                                    attributes={fmt.MANIFEST_KEY: manifest})
        if fmt.WEIGHTS not in group:
            group.create_array(fmt.WEIGHTS, shape=(self.n, 9), chunks=(self.chunk, 9), dtype="float32",
                               compressors=compressors(self.settings["codec"]), fill_value=0.0,
                               dimension_names=("filter", "k"))
        if self.source.reordered and fmt.FILTER_ID not in group:
            group.create_array(fmt.FILTER_ID, shape=(self.n,), chunks=(self.chunk,), dtype="int64",
                               compressors=compressors("zstd"), fill_value=-1, dimension_names=("filter",))
        if self.state["done"] == 0:
            write_json_atomic(self.loc, _progress_path(self.loc), self.state)
        return group

    def _store_exists(self) -> bool:
        fs, root = self.loc.fs()
        return fs.exists(f"{root}/zarr.json")

    def _block(self, h5, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.segments is None:
            return self.source.read(lo, hi, h5), None
        out = np.empty((hi - lo, 9), dtype=self.source.dtype)
        ids = np.empty(hi - lo, dtype=np.int64)
        for a, b, s, e in self.segments.pieces(lo, hi):
            out[a:b] = self.source.read(s, e, h5)
            ids[a:b] = np.arange(s, e)
        return out, ids

    def _copy_chunks(self, group: zarr.Group) -> None:
        weights = group[fmt.WEIGHTS]
        filter_id = group[fmt.FILTER_ID] if self.source.reordered else None
        policy = self.settings["nonfinite"]
        first_bad: list[int] = []
        writing = True
        done = self.state["done"]
        with self.source.open() as h5, progress.bar(total=self.n, desc="convert", unit="filter",
                                                    initial=min(done * self.chunk, self.n),
                                                    unit_scale=True) as pbar:
            for i in range(done, self.n_chunks):
                lo, hi = i * self.chunk, min((i + 1) * self.chunk, self.n)
                raw, ids = self._block(h5, lo, hi)
                with np.errstate(over="ignore", invalid="ignore"):
                    block = raw.astype(np.float32)
                finite = np.isfinite(block)
                if not finite.all():
                    bad_rows = np.flatnonzero(~finite.all(axis=1))
                    self.state["n_nonfinite"] += int((~finite).sum())
                    first_bad.extend((lo + bad_rows[: max(0, 5 - len(first_bad))]).tolist())
                    if policy == "zero":
                        block[~finite] = 0.0
                    elif policy == "error":
                        writing = False
                if writing:
                    weights[lo:hi] = block
                    if filter_id is not None:
                        filter_id[lo:hi] = ids
                    self.state["chunk_sums"].append(float(block.sum(dtype=np.float64)))
                    self.state["done"] = i + 1
                    write_json_atomic(self.loc, _progress_path(self.loc), self.state)
                pbar.update(hi - lo)
        if not writing:
            fs, root = self.loc.fs()
            fs.rm(root, recursive=True)
            raise InputError(
                f"{self.source.path}: {self.state['n_nonfinite']} NaN/Inf filter value(s) (first in filter rows "
                f"{first_bad}); nothing was written. Choose a policy: --nonfinite zero (replace them by 0) or "
                "--nonfinite keep (store them as they are).")

    def _validate(self, group: zarr.Group) -> None:
        weights = group[fmt.WEIGHTS]
        sums = self.state["chunk_sums"]
        if len(sums) != self.n_chunks or weights.shape != (self.n, 9):
            raise StoreError(f"{self.loc.display}: {len(sums)} of {self.n_chunks} chunks recorded; run again "
                             "with --resume.")
        with progress.bar(total=self.n, desc="validate", unit="filter", unit_scale=True) as pbar:
            for i in range(self.n_chunks):
                lo, hi = i * self.chunk, min((i + 1) * self.chunk, self.n)
                got = float(weights[lo:hi].sum(dtype=np.float64))
                if got != sums[i]:
                    raise StoreError(f"{self.loc.display}: chunk {i} of weights reads back with sum {got!r}, "
                                     f"written {sums[i]!r}; the destination is unreliable. Run again with "
                                     "--resume to rewrite from the start of the damage, or --overwrite.")
                pbar.update(hi - lo)

    def _commit(self, group: zarr.Group) -> None:
        source = self.source
        records = normalise_records(source.records)
        models = normalise_models(source.models, records)
        manifest = fmt.read_manifest(group, self.loc, require_complete=False)
        version = int(manifest.get("version", 0)) + 1
        fmt.write_table(self.loc, "records", version, records)
        fmt.write_table(self.loc, "models", version, models)
        sums = self.state["chunk_sums"]
        manifest.update({
            "state": "complete",
            "version": version,
            "n_filters": int(self.n),
            "n_records": int(len(records)),
            "n_models": int(len(models)),
            "reordered": bool(source.reordered),
            "vocabularies": fmt.vocabularies(models, manifest["label_rules"]),
            "integrity": {"n_filters": int(self.n), "n_nonfinite": int(self.state["n_nonfinite"]),
                          "nonfinite_policy": self.settings["nonfinite"],
                          "weights_sum": float(np.sum(sums, dtype=np.float64)), "chunk_sums": sums},
        })
        manifest["provenance"].append({
            "kind": self.kind, "source": os.path.basename(source.path), "size": self.state["identity"]["size"],
            "sha256": self._sha, "converter": f"filtershift {__version__}", "time": fmt.utc_now(),
            "source_dtype": str(source.dtype), "source_layout": list(source.row_shape),
            "filters_key": source.filters_key,
        })
        fmt.write_manifest(group, manifest)
        fs, _ = self.loc.fs()
        path = fmt.fsspec.core.url_to_fs(_progress_path(self.loc), **self.loc.storage_options)[1]
        if fs.exists(path):
            fs.rm(path)
