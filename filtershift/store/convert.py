"""``dataset.h5`` → filtershift store, streaming, resumable, validated before it is marked complete.

Memory is one output chunk plus one source slab at a time, whatever N is. Progress (chunks written and their
float64 sums) goes to a small JSON file written atomically after every chunk; ``resume=True`` continues from it.
Writing a chunk is idempotent (same source → same bytes), so a chunk half-written at a kill is simply written
again. The store stays in state ``converting`` (and refuses to open) until every chunk has been read back,
checksum-verified and summed to the recorded value.

``resume=True`` is idempotent, so a scheduled job can always pass it: with no destination (a kill before it was
created) it starts a fresh conversion, and a complete store of the same source and settings is left alone. The
destination (state ``converting``) and its first progress record are written in one step as soon as the source
is validated, before the source hash and the first chunk. Nothing done before that point could be kept anyway:
the validation is rerun by every run. The source's SHA-256 is computed in a thread alongside the copy and
recorded in the progress file once done, so a resume after that point does not read the source again for it.

:func:`write_store` is the same writer for a source that is not a file (``synth --format zarr`` generates the rows
chunk by chunk): the caller names the source and gives its checksum.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
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
#: The temporary file zarr's local store writes ``zarr.json`` through: the only thing a kill between creating
#: the destination directory and its group metadata can leave.
_GROUP_WRITE_LEFTOVER = re.compile(r"zarr\.[0-9a-f]{32}\.partial")


def compressors(codec: str) -> list:
    """Bytes-to-bytes codecs of ``weights``: the compressor, then always a crc32c checksum."""
    if codec not in fmt.CODECS:
        raise InputError(f"codec {codec!r} is not one of {list(fmt.CODECS)}.")
    head = {"none": [], "zstd": [ZstdCodec(level=1)],
            "lz4": [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", typesize=4)]}[codec]
    return [*head, Crc32cCodec()]


def convert(src, dst, *, chunk_filters: int | None = None, codec: str = fmt.DEFAULT_CODEC,
            overwrite: bool = False, resume: bool = False, trust_pickle: bool = False,
            nonfinite: str = "error", storage_options: dict | None = None, provenance_kind: str = "h5",
            schema: int = fmt.SCHEMA_VERSION) -> str:
    """Convert a CNN-Filter-DB ``dataset.h5`` into a store at ``dst`` (a path or fsspec URL); returns ``dst``.

    ``nonfinite`` says what to do with NaN/Inf filter values: ``error`` (default; nothing is kept),
    ``zero`` (replace by 0) or ``keep``; their count is recorded in the manifest either way.
    ``provenance_kind`` names the source in the provenance entry (``"synth"`` for generated data).

    Parameters
    ----------
    src : str or os.PathLike
        The source ``dataset.h5`` (v1.0 or v0.1 layout), a local file.
    dst : str or os.PathLike
        Store path or fsspec URL to write.
    chunk_filters : int, optional
        Filters per chunk, a positive integer; default 262144.
    codec : {"none", "zstd", "lz4"}, default "none"
        Compression of the filter chunks.
    overwrite : bool, default False
        Replace an existing filtershift store (or empty directory) at ``dst``; anything else there is refused.
    resume : bool, default False
        Continue an interrupted conversion of the same source with the same settings (idempotent: a complete
        store, or no destination, is fine); excludes ``overwrite``.
    trust_pickle : bool, default False
        Allow the pickled object arrays of a pandas "fixed"-format meta table (only for trusted files).
    nonfinite : {"error", "zero", "keep"}, default "error"
        What to do with NaN/Inf filter values.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) of a ``dst`` URL.
    provenance_kind : str, default "h5"
        Kind of source recorded in the provenance entry.
    schema : {1, 2}, default 2
        The store layout to write (docs/format.md); 1 only to produce stores for older readers and tests.

    Returns
    -------
    str
        The store's URL (its absolute path for a local store).

    Raises
    ------
    filtershift.errors.InputError
        If an option is invalid, ``overwrite`` and ``resume`` are both given, or the source is missing, invalid or
        needs ``trust_pickle``.
    filtershift.errors.StoreError
        If ``dst`` already exists (without ``overwrite``/``resume``), is not a filtershift store, holds an
        interrupted conversion of another source or settings, or cannot be written.
    """
    chunk = _check_options(chunk_filters, overwrite, resume, nonfinite, schema)
    source = open_source(src, trust_pickle=trust_pickle)
    return _write(source, dst, _source_identity(source.path), None, chunk, codec, overwrite, resume, nonfinite,
                  storage_options, provenance_kind, schema, "convert")


def write_store(source: Source, dst, *, identity: dict, sha256: str, chunk_filters: int | None = None,
                codec: str = fmt.DEFAULT_CODEC, overwrite: bool = False, resume: bool = False,
                nonfinite: str = "error", storage_options: dict | None = None, provenance_kind: str = "h5",
                schema: int = fmt.SCHEMA_VERSION, desc: str = "convert") -> str:
    """Write a store from any :class:`~filtershift.ingest.h5.Source` whose ``read`` yields its rows (e.g. rows
    generated on demand), the way :func:`convert` writes one from a ``dataset.h5``; returns the store's URL.

    The same streaming, resumable, validated writer as :func:`convert`, whose options it takes; the source is
    named by ``identity`` instead of a file: ``source`` (its name in the provenance), ``size`` and any further
    keys that must match for ``resume`` (a complete store is left alone only when ``source``, ``size`` and
    ``sha256`` match). ``sha256`` is recorded in the provenance as the source's checksum.

    Parameters
    ----------
    source : filtershift.ingest.h5.Source
        Rows (``read``, ``open``), tables, runs and the source's dtype, layout and filter key.
    dst : str or os.PathLike
        Store path or fsspec URL to write.
    identity : dict
        ``source`` and ``size`` (and optionally ``sha256`` and more) identifying what is written.
    sha256 : str
        Checksum of the source recorded in the provenance entry.
    chunk_filters, codec, overwrite, resume, nonfinite, storage_options, provenance_kind, schema
        As in :func:`convert`.
    desc : str, default "convert"
        Label of the progress bar.

    Returns
    -------
    str
        The store's URL, as :func:`convert` returns it.

    Raises
    ------
    filtershift.errors.InputError
        If an option is invalid, or (policy ``error``) a row holds NaN/Inf.
    filtershift.errors.StoreError
        If ``dst`` cannot be written or holds something else, as for :func:`convert`.
    """
    chunk = _check_options(chunk_filters, overwrite, resume, nonfinite, schema)
    return _write(source, dst, identity, sha256, chunk, codec, overwrite, resume, nonfinite, storage_options,
                  provenance_kind, schema, desc)


def _check_options(chunk_filters, overwrite: bool, resume: bool, nonfinite: str, schema: int) -> int:
    """Validate the writer's options before the source is read; returns the chunk size."""
    if nonfinite not in NONFINITE_POLICIES:
        raise InputError(f"nonfinite={nonfinite!r}; choose one of {list(NONFINITE_POLICIES)}.")
    if overwrite and resume:
        raise InputError("--overwrite and --resume exclude each other: resume keeps the work done so far.")
    chunk = int(chunk_filters or fmt.DEFAULT_CHUNK_FILTERS)
    if chunk < 1:
        raise InputError(f"chunk_filters must be positive, got {chunk}.")
    if schema not in fmt.READABLE_SCHEMAS:
        raise InputError(f"schema {schema!r} is not one of {list(fmt.READABLE_SCHEMAS)}.")
    return chunk


def _write(source: Source, dst, identity: dict, sha256: str | None, chunk: int, codec: str, overwrite: bool,
           resume: bool, nonfinite: str, storage_options: dict | None, kind: str, schema: int, desc: str) -> str:
    loc = fmt.Location.of(dst, storage_options, write=True)
    settings = {"chunk_filters": chunk, "codec": codec, "nonfinite": nonfinite}
    with fmt.remote_errors(loc, "write"):
        state = _prepare_destination(loc, identity, settings, overwrite=overwrite, resume=resume, sha256=sha256)
        if state is None:
            return loc.url
        if state["done"] == 0:
            _create_destination(loc, state, schema)
    writer = _Writer(loc, source, settings, state, kind, desc)
    writer.run()
    return loc.url


def _source_identity(path: str) -> dict:
    st = os.stat(path)
    return {"source": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _fresh_state(identity: dict, settings: dict, sha256: str | None = None) -> dict:
    return {"identity": identity, "settings": settings, "done": 0, "chunk_sums": [], "n_nonfinite": 0,
            "sha256": sha256}


def _prepare_destination(loc: fmt.Location, identity: dict, settings: dict, *, overwrite: bool,
                         resume: bool, sha256: str | None = None) -> dict | None:
    """Check what is at ``dst``; return the progress state to continue from (None: nothing to do).

    A state with ``done == 0`` means: (re)create the destination from scratch. ``sha256``: the source's checksum
    when known before writing (it is then not computed from a file).
    """
    fresh = functools.partial(_fresh_state, identity, settings, sha256)
    fs, root = loc.fs()
    if not fs.exists(root):
        return fresh()  # with --resume too: a kill came before the destination existed
    is_store = fs.exists(f"{root}/zarr.json")
    manifest = None
    if is_store:
        group = fmt.open_group(loc, "r")
        manifest = group.attrs.asdict().get(fmt.MANIFEST_KEY)
    empty = not is_store and fs.isdir(root) and all(
        _GROUP_WRITE_LEFTOVER.fullmatch(p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(root, detail=False))
    if resume:
        if empty:
            return fresh()
        if manifest is None:
            raise StoreError(f"{loc.display}: nothing to resume here (not a filtershift store). Choose another "
                             "destination.")
        if manifest.get("state") == "complete":
            _check_complete_matches(loc, manifest, identity, settings)
            print(f"{loc.display}: already complete; nothing to resume.")
            return None
        saved = _read_progress(loc)
        if saved is None:  # killed before the first progress record: nothing to keep, start from chunk 0
            return fresh()
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
    return fresh()


def _check_complete_matches(loc: fmt.Location, manifest: dict, identity: dict, settings: dict) -> None:
    """Refuse to report a complete store as done when it was converted from another source or with other
    settings than the command asks for (its first provenance entry is its conversion)."""
    first = (manifest.get("provenance") or [{}])[0]
    got = {"source": first.get("source"), "size": first.get("size"),
           "chunk_filters": manifest.get("chunk_filters"), "codec": manifest.get("codec"),
           "nonfinite": (manifest.get("integrity") or {}).get("nonfinite_policy")}
    want = {"source": identity["source"], "size": identity["size"], **settings}
    if "sha256" in identity:
        got["sha256"], want["sha256"] = first.get("sha256"), identity["sha256"]
    differ = [f"{k} {got[k]!r} (asked: {want[k]!r})" for k in want
              if got[k] != want[k] and (got[k] is not None or k in ("source", "size", "sha256"))]
    if differ:
        raise StoreError(f"{loc.display}: a complete store, but not the conversion this command asks for: "
                         f"{', '.join(differ)}. Use --overwrite to convert again, or choose another destination.")


def _create_destination(loc: fmt.Location, state: dict, schema: int = fmt.SCHEMA_VERSION) -> None:
    """The group (state ``converting``, its manifest in the same write) and the first progress record, at once:
    from here on a kill leaves a store that ``--resume`` continues."""
    settings = state["settings"]
    manifest = fmt.new_manifest(settings["chunk_filters"], settings["codec"], "converting", schema)
    zarr.open_group(store=loc.zarr_store(read_only=False), mode="w", zarr_format=3,
                    attributes={fmt.MANIFEST_KEY: manifest})
    write_json_atomic(loc, _progress_path(loc), state)


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
    def __init__(self, loc: fmt.Location, source: Source, settings: dict, state: dict, kind: str = "h5",
                 desc: str = "convert"):
        self.loc, self.source, self.settings, self.state, self.kind = loc, source, settings, state, kind
        self.desc = desc
        self.chunk = settings["chunk_filters"]
        self.n = source.n_filters
        self.n_chunks = -(-self.n // self.chunk)
        self.segments = _Segments(source.runs) if source.reordered else None
        self._sha: str | None = state.get("sha256")
        self._sha_error: OSError | None = None
        self._sha_thread: threading.Thread | None = None

    def run(self) -> None:
        """Hash the source (a thread, unless a previous run recorded its hash), copy, validate, commit."""
        if self._sha is None:
            self._sha_thread = threading.Thread(target=self._hash_source, daemon=True)
            self._sha_thread.start()
        group = self._open_arrays()
        self._copy_chunks(group)
        self._validate(group)
        self._finish_hash()
        self._commit(group)

    def _hash_source(self) -> None:
        """SHA-256 of the whole source file (the checksum users compare with the published one). hashlib's state
        cannot be saved, so a kill before it ends loses the hash; once done it goes into the next progress record."""
        h = hashlib.sha256()
        try:
            with open(self.source.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
        except OSError as exc:
            self._sha_error = exc
            return
        self._sha = h.hexdigest()

    def _finish_hash(self) -> None:
        if self._sha_thread is not None:
            self._sha_thread.join()
        if self._sha is None:
            raise InputError(f"{self.source.path}: could not be read to the end to compute its SHA-256 "
                             f"({self._sha_error}); run the same command again with --resume.")
        self._save_progress()

    def _save_progress(self) -> None:
        """Replace the progress file (only this thread writes it), with the source hash once it is known."""
        self.state["sha256"] = self._sha
        write_json_atomic(self.loc, _progress_path(self.loc), self.state)

    def _open_arrays(self) -> zarr.Group:
        """The destination exists (see :func:`_create_destination`); create its arrays if a kill came first."""
        group = fmt.open_group(self.loc, "r+")
        schema = int(fmt.read_manifest(group, self.loc, require_complete=False).get("schema_version", 1))
        if fmt.WEIGHTS not in group:
            group.create_array(fmt.WEIGHTS, shape=(self.n, 9), chunks=(self.chunk, 9), dtype="float32",
                               compressors=compressors(self.settings["codec"]), fill_value=0.0,
                               dimension_names=("filter", "k"), attributes=fmt.array_attributes(schema))
        if self.source.reordered and fmt.FILTER_ID not in group:
            group.create_array(fmt.FILTER_ID, shape=(self.n,), chunks=(self.chunk,), dtype="int64",
                               compressors=compressors("zstd"), fill_value=-1, dimension_names=("filter",),
                               attributes=fmt.array_attributes(schema))
        return group

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
        weights = fmt.weights_for_writing(group)
        filter_id = fmt.weights_for_writing(group, fmt.FILTER_ID) if self.source.reordered else None
        policy = self.settings["nonfinite"]
        first_bad: list[int] = []
        writing = True
        done = self.state["done"]
        with self.source.open() as h5, progress.bar(total=self.n, desc=self.desc, unit="filter",
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
                    self._save_progress()
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
        sums = self.state["chunk_sums"]
        rules = [{"column": r["column"], "contains": r["label"], "value": r["grouped_as"]} for r in source.relabelled]
        manifest["label_rules"] += [r for r in rules if r not in manifest["label_rules"]]
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
            "kind": self.kind, "source": self.state["identity"]["source"], "size": self.state["identity"]["size"],
            "sha256": self._sha, "converter": f"filtershift {__version__}", "time": fmt.utc_now(),
            "source_dtype": str(source.dtype), "source_layout": list(source.row_shape),
            "filters_key": source.filters_key, "meta_format": source.meta_format,
            **({"relabelled": source.relabelled} if source.relabelled else {}),
        })
        fmt.commit_tables(self.loc, group, manifest, records, models)
        for r in source.relabelled:
            print(f"{os.path.basename(source.path)}: {r['models']} model(s) with the v0.1 label {r['label']!r} in "
                  f"'{r['column']}' group as {r['grouped_as']!r} (the v1.0 name); the models table keeps "
                  f"{r['label']!r} (a label rule in the manifest).")
        fs, _ = self.loc.fs()
        path = fmt.fsspec.core.url_to_fs(_progress_path(self.loc), **self.loc.storage_options)[1]
        if fs.exists(path):
            fs.rm(path)
