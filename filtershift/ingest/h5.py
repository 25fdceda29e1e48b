"""Reader of the CNN-Filter-DB ``dataset.h5``: the filter array and the meta table, validated and safe.

The meta table under ``/meta`` is a pandas HDFStore table ("table" or "fixed" format), or, in some v0.1 files, CSV
text in a string or bytes dataset. The visual category is the column ``Visual Category`` (v1.0) or ``Datatype``
(v0.1); v0.1 labels that v1.0 renamed (:data:`V01_LABELS`) are reported in ``Source.relabelled`` so that the store
groups them under the v1.0 name while its models table keeps the source's value (docs/ingest.md).

Pandas' "fixed" format stores object columns as pickles, and PyTables stores list-valued attributes as pickles
too; unpickling runs code. Before pandas touches the file, every node and attribute under ``/meta`` is inspected
with h5py: attribute pickles that hold only plain data (lists, tuples, dicts of strings and numbers, which is all
pandas' table format writes) are proven harmless by a loader that refuses every global; pickled object arrays
(the fixed format's VLARRAY object blocks) are refused unless the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np
import pandas as pd

from filtershift.errors import InputError, reason

FILTER_KEYS = ("filters", "filter")
META_KEY = "meta"
INDEX_LEVELS = ("model_id", "conv_depth", "conv_depth_norm")
#: Meta columns that identify a layer within a conv depth (besides index levels after ``INDEX_LEVELS``).
LAYER_KEYS = ("layer_id",)
#: Per-layer meta columns -> the records column that keeps them (docs/ingest.md, "one row per layer").
LAYER_COLUMNS = {"layer_name": "layer", "layer": "layer", "in_channels": "in_channels",
                 "out_channels": "out_channels", "groups": "groups"}
#: How ``/meta`` can be stored: pandas' two HDF formats, or CSV text in a string/bytes dataset.
META_FORMATS = ("table", "fixed", "csv")
#: The visual-category column: its v1.0 name first, then the v0.1 name.
CATEGORY_COLUMNS = ("Visual Category", "Datatype")
#: Visual-category labels of v0.1 that v1.0 renamed: v0.1 label -> v1.0 label.
V01_LABELS = {"formula": "fractals"}
#: read_csv parses floats exactly by default from pandas 3 on (which deprecates the option); pandas 2 needs it.
CSV_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


@dataclass
class Source:
    """A validated CNN-Filter-DB source: where its filters are and how its records map onto them."""

    path: str
    filters_key: str
    n_filters: int
    dtype: np.dtype
    row_shape: tuple[int, ...]
    models: pd.DataFrame
    records: pd.DataFrame
    reordered: bool
    runs: list = field(repr=False, default_factory=list)
    #: How ``/meta`` was stored, one of :data:`META_FORMATS`.
    meta_format: str = "table"
    #: The visual-category column of the models table (None: the source has none).
    category_column: str | None = None
    #: v0.1 labels to group under their v1.0 name: ``{"column", "label", "grouped_as", "models"}`` each.
    relabelled: list = field(default_factory=list)

    def read(self, start: int, stop: int, h5: h5py.File | None = None) -> np.ndarray:
        """Source rows [start, stop) as (n, 9), in the source dtype."""
        ds = (h5 or self.open())[self.filters_key]
        return ds[start:stop].reshape(stop - start, 9)

    def open(self) -> h5py.File:
        return h5py.File(self.path, "r")


#: The only globals a PyTables attribute pickle may name: the ``Filters`` settings of an index node.
SAFE_GLOBALS = {("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("tables.filters", "Filters"),
                ("__builtin__", "object"), ("builtins", "object")}


class _NoGlobals(pickle.Unpickler):
    """Loads plain data only: any global outside :data:`SAFE_GLOBALS` stops the load."""

    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _is_plain_pickle(raw: bytes) -> bool:
    try:
        _NoGlobals(io.BytesIO(raw)).load()
        return True
    except Exception:
        return False


def _looks_pickled(raw: bytes) -> bool:
    return raw[:1] == b"\x80" or (raw[:1] in (b"(", b"]", b"}", b"N", b"V", b"I", b"F", b"S", b"c")
                                  and raw.rstrip().endswith(b"."))


def find_pickles(h5: h5py.File, root: str = META_KEY) -> list[str]:
    """Names of the nodes and attributes under ``root`` that hold pickles of more than plain data."""
    unsafe: list[str] = []

    def check_attrs(name, obj):
        for key, value in obj.attrs.items():
            raw = value.tobytes() if isinstance(value, (np.void, np.ndarray)) and value.dtype.kind == "V" else value
            if isinstance(raw, (bytes, np.bytes_)) and _looks_pickled(bytes(raw)):
                if not _is_plain_pickle(bytes(raw)):
                    unsafe.append(f"{name} (attribute {key})")
            elif isinstance(value, np.ndarray) and value.dtype.kind == "V":
                unsafe.append(f"{name} (attribute {key})")

    def visit(name, obj):
        full = f"{root}/{name}"
        check_attrs(full, obj)
        if isinstance(obj, h5py.Dataset):
            cls = obj.attrs.get("CLASS", b"")
            atom = obj.attrs.get("PSEUDOATOM", b"")
            if cls == b"VLARRAY" and atom == b"object":
                unsafe.append(f"{full} (pickled object array)")
            elif obj.dtype.kind == "O" and h5py.check_vlen_dtype(obj.dtype) not in (str, bytes):
                unsafe.append(f"{full} (variable-length objects)")

    check_attrs(root, h5[root])
    h5[root].visititems(visit)
    return unsafe


def open_source(path, *, trust_pickle: bool = False, isolate: bool = True) -> Source:
    """Open and validate a ``dataset.h5``; raises :class:`InputError` naming the problem and the remedy.

    With ``isolate`` (the default) the file's structure and meta table are parsed in a child process with a
    memory limit: a corrupted HDF5 file can crash the HDF5 library itself (a segmentation fault, seen when
    fuzzing), which must not take the caller down. The parent then reads only the filter array.
    """
    path = os.fspath(path)
    _check_file(path)
    if not isolate:
        return _open_in_process(path, trust_pickle)
    return _open_isolated(path, trust_pickle)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file. Give the path of the CNN-Filter-DB dataset.h5.")
    if os.path.isdir(path) or not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file. filtershift convert reads the CNN-Filter-DB dataset.h5 "
                         "(filters array + pandas meta table); is the download complete?")


def _corrupt(path: str, exc: BaseException) -> InputError:
    return InputError(f"{path}: the HDF5 file is corrupt or truncated ({reason(exc)}). "
                      "Download it again or check its SHA-256.")


def _open_in_process(path: str, trust_pickle: bool) -> Source:
    try:
        h5 = h5py.File(path, "r")
    except Exception as exc:
        raise _corrupt(path, exc) from None
    try:
        with h5:
            key, n, dtype, row_shape, meta_format, unsafe = _inspect(h5, path)
    except InputError:
        raise
    except Exception as exc:
        raise _corrupt(path, exc) from None
    if unsafe and not trust_pickle:
        shown = ", ".join(unsafe[:4]) + (f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else "")
        raise InputError(
            f"{path}: the meta table contains pickled Python objects ({shown}); unpickling an untrusted file "
            "can run arbitrary code. If you trust this file (e.g. the official CNN-Filter-DB release), pass "
            "--trust-pickle (trust_pickle=True); otherwise re-save the meta with "
            "DataFrame.to_hdf(..., format='table').")
    meta = _read_csv_meta(path) if meta_format == "csv" else _read_meta(path)
    models, records, runs, reordered = parse_meta(meta, n, path)
    column, relabelled = visual_category(models, path)
    return Source(path, key, n, dtype, row_shape, models, records, reordered, runs, meta_format, column, relabelled)


def _inspect(h5: h5py.File, path: str):
    key = next((k for k in FILTER_KEYS if k in h5 and isinstance(h5[k], h5py.Dataset)), None)
    if key is None:
        raise InputError(f"{path}: no filter array (looked for datasets {list(FILTER_KEYS)}; found "
                         f"{sorted(h5.keys())}). Is this the CNN-Filter-DB dataset.h5?")
    ds = h5[key]
    if ds.ndim not in (2, 3) or ds.shape[1:] not in ((9,), (3, 3)):
        raise InputError(f"{path}: filter array '{key}' has shape {ds.shape}; expected (N, 9) or "
                         "(N, 3, 3) of 3x3 kernels.")
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4, 8):
        raise InputError(f"{path}: filter array '{key}' has dtype {ds.dtype}; expected float16/32/64.")
    if META_KEY not in h5:
        raise InputError(f"{path}: no meta table (the pandas DataFrame, or its CSV text, under key '{META_KEY}'). "
                         "filtershift needs it to know which model and depth each filter comes from.")
    meta_format = _meta_format(h5[META_KEY], path)
    unsafe = find_pickles(h5) if meta_format != "csv" else []
    return key, int(ds.shape[0]), ds.dtype, tuple(ds.shape[1:]), meta_format, unsafe


def _not_meta(path: str, what: str) -> InputError:
    return InputError(f"{path}: '/{META_KEY}' is {what}: neither a pandas table nor CSV text. filtershift reads the "
                      f"meta table as written by DataFrame.to_hdf(path, key='{META_KEY}', format='table') or as CSV "
                      "text (DataFrame.to_csv()) in a string or bytes dataset; re-save the meta table in one of "
                      "these forms.")


def _meta_format(node, path: str) -> str:
    """How ``/meta`` is stored (one of :data:`META_FORMATS`); an error naming what it is otherwise."""
    if isinstance(node, h5py.Group):
        kind = node.attrs.get("pandas_type")
        kind = kind.decode() if isinstance(kind, (bytes, np.bytes_)) else kind
        if not isinstance(kind, str):
            raise _not_meta(path, f"a group without pandas' attributes (members {sorted(node.keys())[:6]})")
        return "table" if kind.endswith("_table") else "fixed"
    if not isinstance(node, h5py.Dataset):
        raise _not_meta(path, f"a {type(node).__name__}")
    if _is_text(node):
        return "csv"
    raise _not_meta(path, f"a {node.dtype} dataset of shape {node.shape}")


def _is_text(ds: h5py.Dataset) -> bool:
    """A string scalar, a 1-D byte array or an opaque scalar: the ways a text can be stored in one dataset."""
    if ds.shape == ():
        return h5py.check_string_dtype(ds.dtype) is not None or ds.dtype.kind == "V"
    return ds.ndim == 1 and ds.dtype in (np.uint8, np.int8)


def _memory_limit() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total * 0.75)
    except Exception:
        return 8 << 30


def _open_isolated(path: str, trust_pickle: bool) -> Source:
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="filtershift-probe-") as tmp:
        cmd = [sys.executable, "-m", "filtershift.ingest.h5", path, tmp, str(_memory_limit())]
        if trust_pickle:
            cmd.append("--trust-pickle")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode < 0:
            raise InputError(f"{path}: reading the file crashed the HDF5 library (signal {-proc.returncode}); "
                             "the file is corrupt. Download it again or check its SHA-256.")
        summary_path = os.path.join(tmp, "summary.json")
        if not os.path.exists(summary_path):
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"{path}: the file could not be parsed ({detail}).")
        with open(summary_path) as f:
            summary = json.load(f)
        if "error" in summary:
            raise InputError(summary["error"])
        models = pd.read_parquet(os.path.join(tmp, "models.parquet"))
        records = pd.read_parquet(os.path.join(tmp, "records.parquet"))
        arrays = np.load(os.path.join(tmp, "runs.npz"))
    flat, offsets = arrays["runs"], arrays["offsets"]
    runs = [[(int(a), int(b)) for a, b in flat[offsets[i]:offsets[i + 1]]] for i in range(len(offsets) - 1)]
    return Source(path, summary["filters_key"], summary["n_filters"], np.dtype(summary["dtype"]),
                  tuple(summary["row_shape"]), models, records, summary["reordered"], runs, summary["meta_format"],
                  summary["category_column"], summary["relabelled"])


def _probe_main(argv: list[str]) -> int:
    """Child side of :func:`open_source`: parse, validate and write the tables for the parent."""
    import json
    import resource

    path, out, limit = argv[0], argv[1], int(argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        src = _open_in_process(path, "--trust-pickle" in argv)
    except InputError as exc:
        summary = {"error": str(exc)}
    except MemoryError:
        summary = {"error": f"{path}: the meta table needs more memory than allowed ({limit >> 20} MiB); "
                            "the file is probably corrupt."}
    except Exception as exc:
        summary = {"error": str(_corrupt(path, exc))}
    else:
        src.models.to_parquet(os.path.join(out, "models.parquet"), index=False)
        src.records.to_parquet(os.path.join(out, "records.parquet"), index=False)
        flat = np.array([run for r in src.runs for run in r], dtype=np.int64).reshape(-1, 2)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in src.runs])]).astype(np.int64)
        np.savez(os.path.join(out, "runs.npz"), runs=flat, offsets=offsets)
        summary = {"filters_key": src.filters_key, "n_filters": src.n_filters, "dtype": src.dtype.str,
                   "row_shape": list(src.row_shape), "reordered": src.reordered, "meta_format": src.meta_format,
                   "category_column": src.category_column, "relabelled": src.relabelled}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f)
    return 0


def _read_meta(path: str) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pd.read_hdf(path, META_KEY)
    except Exception as exc:
        raise InputError(f"{path}: the meta table cannot be read ({reason(exc)}).") from None
    if not isinstance(meta, pd.DataFrame):
        raise InputError(f"{path}: '{META_KEY}' is a {type(meta).__name__}, not a DataFrame.")
    return meta


def _csv_text(path: str) -> str:
    with h5py.File(path, "r") as h5:
        raw = h5[META_KEY][()]
    if isinstance(raw, (np.ndarray, np.void)):
        raw = raw.tobytes()
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_meta(path, f"a dataset of bytes that are not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None


def _read_csv_meta(path: str) -> pd.DataFrame:
    """The meta table from CSV text under ``/meta`` (some v0.1 files), indexed as pandas' HDF table is.

    Read as ``pandas.read_csv`` reads it (empty fields and pandas' NA strings are missing; each column's type is
    inferred from all its rows at once), except that floats are parsed to the exact double their text names
    (:data:`CSV_FLOATS`; pandas 2's default parser can be one unit in the last place off). A leading column with
    an empty header (a ``to_csv`` row number) is dropped.
    """
    return parse_csv_meta(_csv_text(path), path)


def parse_csv_meta(text: str, path: str) -> pd.DataFrame:
    """The meta table from its CSV ``text`` (see :func:`_read_csv_meta`); ``path`` names the source in errors."""
    try:
        meta = pd.read_csv(io.StringIO(text), low_memory=False, **CSV_FLOATS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise _not_meta(path, f"text that does not parse as CSV ({reason(exc)})") from None
    if len(meta.columns) and str(meta.columns[0]) == "Unnamed: 0":
        meta = meta.drop(columns=meta.columns[0])
    missing = [c for c in (*INDEX_LEVELS, "filter_ids") if c not in meta.columns]
    if missing:
        shown = [str(c) for c in meta.columns[:8]] + (["..."] if len(meta.columns) > 8 else [])
        raise InputError(f"{path}: the CSV meta table under '/{META_KEY}' lacks the column(s) {missing} (it has "
                         f"{shown}); filtershift needs model_id, conv_depth, conv_depth_norm and filter_ids to know "
                         "which model and depth each filter comes from. Store the complete CNN-Filter-DB meta "
                         "table: DataFrame.to_csv() with its index, or DataFrame.to_hdf(path, key='meta', "
                         "format='table').")
    for column, check, kind in (("model_id", pd.api.types.is_integer_dtype, "integers"),
                                ("conv_depth", pd.api.types.is_integer_dtype, "integers"),
                                ("conv_depth_norm", pd.api.types.is_numeric_dtype, "numbers")):
        if not check(meta[column]):
            raise InputError(f"{path}: the CSV meta table's column {column} holds values that are not {kind} "
                             f"(e.g. {meta[column].iloc[0]!r}); fix the meta table.")
    return meta.set_index(list(INDEX_LEVELS))


def _parse_ids(value, row: int, path: str) -> list[tuple[int, int]]:
    """Runs [a, b) of one record's filter ids: "start:end" (inclusive end, v1.0), a list of ids (v0.1), or the
    text of such a list ("[0, 1, 2]", as ``to_csv`` writes a list)."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        body = value[1:-1].strip()
        try:
            value = np.array(body.split(",") if body else [], dtype=object).astype(np.int64)
        except ValueError:
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise InputError(f"{path}: meta row {row}: filter_ids {shown!r} is not a list of integer ids.") from None
    if isinstance(value, str):
        try:
            a, b = (int(x) for x in value.split(":"))
        except ValueError:
            raise InputError(f"{path}: meta row {row}: filter_ids {value!r} is not 'start:end'.") from None
        if b < a:
            raise InputError(f"{path}: meta row {row}: filter_ids {value!r} ends before it starts.")
        return [(a, b + 1)]
    ids = np.asarray(value, dtype=np.int64).ravel()
    if ids.size == 0:
        return []
    ids = np.sort(ids)
    if np.any(np.diff(ids) == 0):
        raise InputError(f"{path}: meta row {row}: filter_ids lists the same id twice.")
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [ids.size]])
    return [(int(ids[s]), int(ids[e - 1]) + 1) for s, e in zip(starts, stops)]


def parse_meta(meta: pd.DataFrame, n_filters: int, path: str = "dataset.h5"):
    """Split the meta table into models and records and check that records tile the filters exactly.

    Returns (models, records, runs, reordered): ``runs`` lists per record its source id runs; ``reordered``
    says whether records must be moved so that each becomes one contiguous slice in sorted order.
    """
    df = meta.reset_index()
    missing = [c for c in (*INDEX_LEVELS, "filter_ids") if c not in df.columns]
    if missing:
        raise InputError(f"{path}: meta table lacks {missing}; expected index [model_id, conv_depth, "
                         "conv_depth_norm] and a filter_ids column.")
    keys = _layer_keys(meta, df)
    dup = df.duplicated(["model_id", "conv_depth", *keys])
    if dup.any():
        first = df.loc[dup, ["model_id", "conv_depth", *keys]].iloc[0].tolist()
        each = "model, conv depth and layer (" + ", ".join(keys) + ")" if keys else "model and conv depth"
        raise InputError(f"{path}: {int(dup.sum())} duplicate ({', '.join(['model_id', 'conv_depth', *keys])}) "
                         f"record(s), first {first}. Each {each} must appear once; fix the meta table (a table "
                         "with one row per layer needs a layer_id index level or column that tells them apart).")
    _check_depth_norm(df, path)
    runs = [_parse_ids(v, i, path) for i, v in enumerate(df["filter_ids"].tolist())]
    counts = np.array([sum(b - a for a, b in r) for r in runs], dtype=np.int64)
    flat = np.array([(a, b) for r in runs for a, b in r], dtype=np.int64).reshape(-1, 2)
    if flat.size:
        bad = (flat[:, 0] < 0) | (flat[:, 1] > n_filters)
        if bad.any():
            raise InputError(f"{path}: {int(bad.sum())} filter id range(s) fall outside [0, {n_filters}) "
                             f"(e.g. {flat[bad][0].tolist()}); the meta table does not match the filter array.")
        order = np.argsort(flat[:, 0], kind="stable")
        srt = flat[order]
        overlap = srt[1:, 0] < srt[:-1, 1]
        if overlap.any():
            raise InputError(f"{path}: {int(overlap.sum())} record(s) share filter ids (first overlap at id "
                             f"{int(srt[1:, 0][overlap][0])}); every filter must belong to one record.")
    covered = int(counts.sum())
    if covered != n_filters:
        raise InputError(f"{path}: records cover {covered} of {n_filters} filters; {n_filters - covered} "
                         "filter(s) belong to no record. The meta table and filter array do not match.")
    df["n"] = counts
    df = df[df["n"] > 0].reset_index(drop=True)
    runs = [r for r, c in zip(runs, counts) if c > 0]
    contiguous = all(len(r) == 1 for r in runs)
    firsts = np.array([r[0][0] for r in runs], dtype=np.int64)
    if contiguous and np.all(np.diff(firsts) > 0):
        order = np.arange(len(df))
        reordered = False
    elif contiguous:
        order = np.argsort(firsts, kind="stable")
        reordered = False
    else:
        order = np.lexsort((df["conv_depth"].to_numpy(), df["model_id"].to_numpy()))
        reordered = True
    df = df.iloc[order].reset_index(drop=True)
    runs = [runs[i] for i in order]
    layer_cols = [c for c in LAYER_COLUMNS if c in df.columns]
    model_cols = [c for c in df.columns
                  if c not in ("conv_depth", "conv_depth_norm", "filter_ids", "n", *keys, *layer_cols)]
    _check_model_columns(df, model_cols, path)
    models = (df[model_cols].drop_duplicates("model_id").sort_values("model_id").reset_index(drop=True))
    records = pd.DataFrame({
        "model_id": df["model_id"].astype("int64"),
        "conv_depth": df["conv_depth"].astype("int32"),
        "conv_depth_norm": df["conv_depth_norm"].astype("float32"),
        "n": df["n"].astype("int64"),
        "source_start": [r[0][0] for r in runs],
    })
    records = _layer_columns(records, df, keys, layer_cols, path)
    return _typed(models), records, runs, reordered


def _layer_keys(meta: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    """The columns that tell layers of one conv depth apart: index levels after :data:`INDEX_LEVELS` and
    :data:`LAYER_KEYS`, then the layer name; empty for a table with one row per conv depth (v1.0)."""
    levels = [str(n) for n in meta.index.names if n is not None and str(n) not in INDEX_LEVELS]
    keys = levels + [c for c in LAYER_KEYS if c in df.columns and c not in levels]
    if keys:
        keys += [c for c in ("layer_name", "layer") if c in df.columns and c not in keys][:1]
    return keys


def _check_depth_norm(df: pd.DataFrame, path: str) -> None:
    """The layers of one conv depth share its ``conv_depth_norm``; two values would make it ambiguous."""
    spread = df.groupby(["model_id", "conv_depth"])["conv_depth_norm"].nunique(dropna=False)
    if (spread > 1).any():
        m, d = spread.index[spread.to_numpy() > 1][0]
        raise InputError(f"{path}: model_id {m}, conv_depth {d}: its layers have {int(spread.max())} different "
                         "conv_depth_norm values; the layers of one conv depth share conv_depth / (n_depths - 1). "
                         "Fix the meta table.")


def _check_model_columns(df: pd.DataFrame, columns: list[str], path: str) -> None:
    """Every models column must hold one value per model: a column that varies within a model is per-layer data
    the models table cannot keep (taking one row's value would be silently wrong)."""
    cols = [c for c in columns if c != "model_id"]
    if not cols or not df["model_id"].duplicated().any():
        return
    table = df[["model_id", *cols]].copy()
    for c in cols:
        if pd.api.types.is_object_dtype(table[c]):
            table[c] = table[c].map(lambda v: None if _missing(v) else repr(v))
    spread = table.groupby("model_id")[cols].nunique(dropna=False).max()
    varying = [str(c) for c in cols if spread[c] > 1]
    if varying:
        raise InputError(f"{path}: meta column(s) {varying} vary within a model, but filtershift keeps only "
                         f"{sorted(set(LAYER_COLUMNS))} per layer (as records columns: layer, in_channels, "
                         "out_channels, groups) and one value per model otherwise. Drop these columns or make them "
                         "model-level, and convert again.")


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _layer_columns(records: pd.DataFrame, df: pd.DataFrame, keys: list[str], layer_cols: list[str],
                   path: str) -> pd.DataFrame:
    """Add the per-layer columns to the records: the layer name (else the layer key as text) and the channels."""
    names = [c for c in layer_cols if LAYER_COLUMNS[c] == "layer"]
    if names:
        records["layer"] = df[names[0]].map(lambda v: "" if _missing(v) else
                                            (v.decode() if isinstance(v, bytes) else str(v))).to_numpy(object)
    elif keys:
        records["layer"] = df[keys].astype(str).agg("/".join, axis=1).to_numpy(object)
    for c in layer_cols:
        if LAYER_COLUMNS[c] == "layer":
            continue
        values = pd.to_numeric(df[c], errors="coerce")
        bad = (values.isna() & df[c].notna()) | (values.notna() & (values % 1 != 0)) | (values < 0)
        if bad.any():
            raise InputError(f"{path}: meta column {c} holds {df[c][bad].iloc[0]!r}, not a non-negative integer "
                             "count of channels; fix the meta table.")
        records[c] = pd.array(values.to_numpy(), dtype="Float64").astype("Int64")
    return records


def _label(value):
    """A visual-category label as grouped: None when missing, the v1.0 name of a renamed v0.1 label."""
    if _missing(value):
        return None
    return V01_LABELS.get(str(value), str(value))


def visual_category(models: pd.DataFrame, path: str = "dataset.h5") -> tuple[str | None, list[dict]]:
    """The visual-category column of the models table and the v0.1 labels in it that v1.0 renamed.

    Parameters
    ----------
    models : pandas.DataFrame
        The models table (one row per model, with ``model_id``).
    path : str, default "dataset.h5"
        The source, named in errors.

    Returns
    -------
    tuple
        The column (``Visual Category``, else ``Datatype``, else None) and one
        ``{"column", "label", "grouped_as", "models"}`` per column and renamed label present.

    Raises
    ------
    filtershift.errors.InputError
        If both ``Visual Category`` and ``Datatype`` are present and disagree for a model (a missing value counts
        as disagreeing with a present one; v0.1 labels are compared under their v1.0 name).
    """
    present = [c for c in CATEGORY_COLUMNS if c in models.columns]
    if len(present) == 2:
        pairs = zip(models["model_id"].tolist(), *(models[c].tolist() for c in present))
        differ = [(m, a, b) for m, a, b in pairs if _label(a) != _label(b)]
        if differ:
            m, a, b = differ[0]
            raise InputError(f"{path}: the meta table has both '{present[0]}' (v1.0) and '{present[1]}' (v0.1) "
                             f"visual-category columns and they disagree for {len(differ)} model(s) (first: "
                             f"model_id {m}: {a!r} vs {b!r}), so the visual category is ambiguous. Keep one of "
                             f"them (e.g. meta.drop(columns='{present[1]}')) and convert again.")
    relabelled = []
    for column in present:
        values = [None if _label(v) is None else str(v) for v in models[column].tolist()]
        for old, new in V01_LABELS.items():
            count = values.count(old)
            if count:
                relabelled.append({"column": column, "label": old, "grouped_as": new, "models": count})
    return (present[0] if present else None), relabelled


def _typed(models: pd.DataFrame) -> pd.DataFrame:
    """Give object columns a Parquet-friendly type: all-bool columns (a bool column with missing values) become
    nullable booleans, all-numeric columns numbers, the rest strings."""
    out = models.copy()
    for col in out.columns:
        s = out[col]
        present = s[s.notna()] if pd.api.types.is_object_dtype(s) else s.iloc[:0]
        if len(present) and all(isinstance(v, (bool, np.bool_)) for v in present):
            out[col] = s.astype("boolean")
        elif pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            if s.notna().sum() and num.notna().sum() == s.notna().sum() and not pd.api.types.is_string_dtype(s):
                out[col] = num
            else:
                out[col] = s.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v))
                                 else (v.decode() if isinstance(v, bytes) else str(v))).astype("string")
    out.columns = [str(c) for c in out.columns]
    return out


if __name__ == "__main__":
    import sys

    sys.exit(_probe_main(sys.argv[1:]))
