"""A run-length ``xarray`` index of the ``filter`` dimension over the records table.

The filters of a record are contiguous, so the whole per-filter meta is a few runs: (record row, first position in
this Dataset, offset of that position inside the record). :class:`RecordIndex` holds those runs plus the records
and models tables, owns the per-filter coordinates (``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm``
and every grouping column, with string labels) and builds them lazily, block by block with ``np.repeat``, chunked
like ``weights``. ``sel`` by meta resolves in O(records) from the tables; ``isel`` returns an index whose runs and
records follow the subset; ``xr.concat`` of selections joins the runs. Nothing of size N is computed here except
the integer positions of a non-contiguous ``sel``: xarray's ``Dataset.sel`` always applies an Index's result as a
positional ``isel`` (``IndexSelResult.dim_indexers``), so dask then indexes with one position per selected filter.
``take_runs`` (with :mod:`filtershift.store.multislice`) is the O(runs) form used by ``filtershift.select`` and
``ds.filtershift.sel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from xarray.core.indexes import Index
from xarray.core.indexing import IndexSelResult

from filtershift.errors import InputError

#: Labels: Python strings in an object array marked as variable-length strings, so that to_zarr/to_netcdf write them
#: as strings without computing the coordinate first to infer a type.
LABEL_DTYPE = np.dtype(object, metadata={"element_type": str})
#: Numeric per-record coordinates and their dtypes (the order of the coordinates in a Dataset).
META = {"record": np.int32, "model_id": np.int64, "conv_depth": np.int32, "conv_depth_norm": np.float32}


@dataclass(frozen=True, eq=False)
class Tables:
    """What every selection of one Dataset shares: the full tables and the per-record values of each coordinate.

    ``values[name]`` has one entry per row of ``records`` (numbers for META, labels as an object array for the
    grouping coordinates); ``labels[name]`` is a grouping coordinate's vocabulary (sorted), ``grouping[name]``
    its models-table column, ``missing[name]`` the label that stands for a missing value (only for coordinates
    whose column has one). ``shared`` holds the whole Dataset built on these tables (``"dataset"``, set when
    :func:`filtershift.store.dataset.open_store` or ``from_arrays`` builds it) and what higher layers keep for it
    (its statistics), so that every selection finds the store it was selected from; it is not compared, shown or
    pickled.
    """

    records: pd.DataFrame
    models: pd.DataFrame
    grouping: dict
    labels: dict
    values: dict
    codes: dict
    rules: tuple
    missing: dict = field(default_factory=dict)
    shared: dict = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "shared"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, shared={})

    @property
    def names(self) -> list:
        return [*META, *self.grouping]


class RecordIndex(Index):
    """Index of the ``filter`` dimension: runs of whole or partial records (see the module docstring)."""

    def __init__(self, tables: Tables, row, start, offset, size: int, chunks: tuple, inner=(9,),
                 dtype=np.float32, dim: str = "filter", full: bool = False):
        self.tables = tables
        self.row = np.asarray(row, np.int64)
        self.start = np.asarray(start, np.int64)
        self.offset = np.asarray(offset, np.int64)
        self.size = int(size)
        self.chunks = tuple(int(c) for c in chunks)
        self.inner, self.dtype, self.dim, self.full = tuple(inner), np.dtype(dtype), dim, full

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_tables(cls, tables: Tables, chunks: tuple, inner=(9,), dtype=np.float32, dim: str = "filter"):
        """The index of a whole store: one run per record holding filters."""
        rec = tables.records
        n = rec["n"].to_numpy(np.int64)
        keep = np.flatnonzero(n > 0)
        return cls(tables, keep, rec["start"].to_numpy(np.int64)[keep], np.zeros(len(keep), np.int64),
                   int(n.sum()), chunks, inner, dtype, dim, full=True)

    @classmethod
    def from_variables(cls, variables, *, options):
        raise InputError("a RecordIndex is built by filtershift.open_store or filtershift.from_arrays, not by "
                         "set_xindex.")

    @property
    def stop(self) -> np.ndarray:
        return np.append(self.start[1:], self.size) if len(self.start) else self.start

    def _replace(self, row, start, offset, size, chunks, full=False) -> RecordIndex:
        row, start, offset = _merge_runs(np.asarray(row, np.int64), np.asarray(start, np.int64),
                                         np.asarray(offset, np.int64))
        return type(self)(self.tables, row, start, offset, size, chunks, self.inner, self.dtype, self.dim, full)

    # -- the coordinates ---------------------------------------------------------------------------------------

    def create_variables(self, variables=None) -> dict:
        variables = variables or {}
        out = {}
        for name in self.tables.names:
            values = self.tables.values[name][self.row]
            data = _per_filter(values, self.start, self.stop, self.chunks, name)
            attrs = dict(variables[name].attrs) if name in variables else self.label_attrs(name)
            out[name] = xr.Variable(self.dim, data, attrs=attrs)
        return out

    def label_attrs(self, name: str) -> dict:
        """The attrs of coordinate ``name``: for a grouping coordinate ``labels``, ``column`` and, when a model's
        label is missing, ``missing`` (the label that stands for it)."""
        if name not in self.tables.grouping:
            return {}
        attrs = {"labels": list(self.tables.labels[name]), "column": self.tables.grouping[name]}
        if name in self.tables.missing:
            attrs["missing"] = self.tables.missing[name]
        return attrs

    # -- positional selection ----------------------------------------------------------------------------------

    def isel(self, indexers) -> RecordIndex | None:
        key = indexers.get(self.dim, slice(None))
        if isinstance(key, xr.Variable):
            if key.dims != (self.dim,):
                return None
            key = key.values
        if isinstance(key, (int, np.integer)) or (isinstance(key, np.ndarray) and key.ndim == 0):
            return None
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.size)
            if step == 1:
                return self._slice(lo, max(hi, lo), self._chunks_after(key))
            chunks, pos = self._chunks_after(key), np.arange(lo, hi, step)
        else:
            pos = np.asarray(key)
            pos = np.flatnonzero(pos) if pos.dtype.kind == "b" else pos.astype(np.int64)
            chunks = self._chunks_after(pos)
        pos = pos.astype(np.int64)
        pos = np.where(pos < 0, pos + self.size, pos)
        if pos.size and (pos.min() < 0 or pos.max() >= self.size):
            raise IndexError(f"filter positions out of range for {self.size} filters.")
        i = np.searchsorted(self.start, pos, side="right") - 1
        within = self.offset[i] + pos - self.start[i]
        return self._replace(self.row[i], np.arange(len(pos), dtype=np.int64), within, len(pos), chunks)

    def _slice(self, lo: int, hi: int, chunks) -> RecordIndex:
        if lo == 0 and hi == self.size:
            return type(self)(self.tables, self.row, self.start, self.offset, self.size, chunks, self.inner,
                              self.dtype, self.dim, self.full)
        stop = self.stop
        i0, i1 = np.searchsorted(stop, lo, side="right"), np.searchsorted(self.start, hi, side="left")
        first = np.maximum(self.start[i0:i1], lo)
        return self._replace(self.row[i0:i1], first - lo, self.offset[i0:i1] + first - self.start[i0:i1],
                             hi - lo, chunks)

    def _chunks_after(self, key) -> tuple:
        """The chunks ``weights`` gets from the same indexer. A slice: dask's own rule on an empty graph-only array
        (O(chunks)); integer positions: :func:`take_chunks`, dask's rule without running its take (which costs
        O(positions) in Python lists)."""
        if isinstance(key, slice):
            dummy = da.empty((self.size, *self.inner), chunks=(self.chunks, *self.inner), dtype=self.dtype)
            return dummy[key].chunks[0]
        return take_chunks(self.chunks, key)

    def take_runs(self, starts, lengths, chunks) -> RecordIndex:
        """The index of the runs ``[start, start + length)`` of this Dataset's filters, in order, with ``chunks``:
        O(runs + runs of records), no positions (see :mod:`filtershift.store.multislice`)."""
        starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        stops = starts + lengths
        i0 = np.searchsorted(self.stop, starts, side="right")
        i1 = np.searchsorted(self.start, stops, side="left")
        counts = i1 - i0
        sel = np.repeat(np.arange(len(starts)), counts)
        i = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + i0[sel]
        first = np.maximum(self.start[i], starts[sel])
        last = np.minimum(self.stop[i], stops[sel])
        new_start = np.concatenate([[0], np.cumsum(last - first)[:-1]]).astype(np.int64) if len(i) else i
        return self._replace(self.row[i], new_start, self.offset[i] + first - self.start[i],
                             int(lengths.sum()), chunks)

    # -- label selection ---------------------------------------------------------------------------------------

    def sel(self, labels, method=None, tolerance=None) -> IndexSelResult:
        if method is not None or tolerance is not None:
            raise InputError("selection by meta is exact; method/tolerance are not supported.")
        starts, lengths = self.runs_matching(labels)
        if len(starts) == 0:
            return IndexSelResult({self.dim: slice(0, 0)})
        if np.all(starts[1:] == (starts + lengths)[:-1]):
            return IndexSelResult({self.dim: slice(int(starts[0]), int(starts[-1] + lengths[-1]))})
        return IndexSelResult({self.dim: runs_positions(starts, lengths)})

    def runs_matching(self, labels: dict) -> tuple[np.ndarray, np.ndarray]:
        """The runs (starts, lengths) of the filters whose coordinates match every ``labels`` item (see
        :meth:`match`); O(records). ``sel`` turns them into positions for xarray; ``ds.filtershift.sel`` and
        ``filtershift.select`` take them as slices of blocks."""
        keep = np.ones(len(self.row), bool)
        for name, wanted in labels.items():
            keep &= self.match(name, wanted)
        return self.start[keep], (self.stop - self.start)[keep]

    def runs_where(self, query) -> tuple[np.ndarray, np.ndarray]:
        """The runs (starts, lengths) whose record satisfies ``query``, a ``--where`` expression (text or a parsed
        :class:`~filtershift.store.query.Query`); evaluated once per record of the tables, O(records)."""
        from filtershift.store.query import parse, query_columns

        query = parse(query) if isinstance(query, str) else query
        t = self.tables
        records = t.records.drop(columns=[c for c in ("start", "stop", "source_start") if c in t.records])
        columns = query_columns(records, t.models, t.values, t.grouping, t.missing)
        keep = query.mask(columns, t.labels)[self.row]
        return self.start[keep], (self.stop - self.start)[keep]

    def match(self, name, wanted) -> np.ndarray:
        """Which runs match ``wanted`` for coordinate ``name``: a value, a list of values, a slice (inclusive,
        like pandas label slices), or for ``record``/``model_id`` a boolean condition with one value per row of
        ``records(ds)``/``models(ds)`` (e.g. ``ds.sel(record=fs.records(ds).n > 100)``)."""
        if name not in self.tables.values:
            raise InputError(f"unknown coordinate {name!r}; choose one of {self.tables.names}.")
        values = self.tables.values[name][self.row]
        if isinstance(wanted, (xr.DataArray, xr.Variable)):
            wanted = wanted.values
        if isinstance(wanted, slice):
            if wanted.step is not None:
                raise InputError(f"{name}: a slice of meta values takes no step.")
            ok = np.ones(len(values), bool)
            if wanted.start is not None:
                ok &= values >= wanted.start
            if wanted.stop is not None:
                ok &= values <= wanted.stop
            return ok
        mask = np.asarray(wanted.to_numpy() if isinstance(wanted, pd.Series) else wanted)
        if mask.dtype.kind == "b" and mask.ndim == 1 and name in ("record", "model_id"):
            table = self.record_table() if name == "record" else self.model_table()
            if len(mask) != len(table):
                raise InputError(f"{name}: a boolean condition must have one value per row of "
                                 f"{'records' if name == 'record' else 'models'}(ds) ({len(table)}); got {len(mask)}.")
            return np.isin(values, table[name].to_numpy()[mask])
        wanted_list = list(np.atleast_1d(np.asarray(wanted, dtype=object)))
        if name in self.tables.grouping:
            known = self.tables.labels[name]
            unknown = [w for w in wanted_list if w not in known]
            if unknown:
                raise InputError(f"{name}: no label(s) {unknown}; the labels are {list(known)}.")
        return pd.Index(values).isin(wanted_list)

    # -- combining ---------------------------------------------------------------------------------------------

    @classmethod
    def concat(cls, indexes, dim, positions=None) -> RecordIndex:
        first = indexes[0]
        if positions is not None:
            raise InputError("concatenating filtershift Datasets at given positions is not supported.")
        if any(ix.tables is not first.tables and not _same_tables(ix.tables, first.tables) for ix in indexes):
            raise InputError("only selections of one filtershift Dataset can be concatenated; these come from "
                             "different stores or tables.")
        base = np.cumsum([0] + [ix.size for ix in indexes[:-1]])
        row = np.concatenate([ix.row for ix in indexes])
        start = np.concatenate([ix.start + b for ix, b in zip(indexes, base)])
        offset = np.concatenate([ix.offset for ix in indexes])
        chunks = tuple(c for ix in indexes for c in ix.chunks)
        return first._replace(row, start, offset, int(sum(ix.size for ix in indexes)), chunks)

    def equals(self, other, *, exclude=None) -> bool:
        return (isinstance(other, RecordIndex) and (other.tables is self.tables
                                                   or _same_tables(other.tables, self.tables))
                and self.size == other.size and np.array_equal(self.row, other.row)
                and np.array_equal(self.start, other.start) and np.array_equal(self.offset, other.offset))

    def _copy(self, deep=True, memo=None) -> RecordIndex:
        return type(self)(self.tables, self.row, self.start, self.offset, self.size, self.chunks, self.inner,
                          self.dtype, self.dim, self.full)

    # -- tables ------------------------------------------------------------------------------------------------

    def record_table(self) -> pd.DataFrame:
        """The records of this Dataset, one row per run: the table's columns, with ``start``/``stop``/``n`` the
        run's positions in this Dataset (a record cut by a selection counts only its selected filters)."""
        rec = self.tables.records
        if self.full:
            return rec
        out = rec.iloc[self.row].reset_index(drop=True)
        stop = self.stop
        out["source_start"] = out["source_start"].to_numpy(np.int64) + self.offset
        out["start"] = self.start
        out["stop"] = stop
        out["n"] = (stop - self.start).astype(out["n"].dtype)
        return out

    def model_table(self) -> pd.DataFrame:
        """The models with filters in this Dataset (``n_filters`` counts the filters in this Dataset)."""
        mods = self.tables.models
        if self.full:
            return mods
        rec = self.record_table()
        counts = rec.groupby("model_id")["n"].sum()
        out = mods[mods["model_id"].isin(counts.index)].reset_index(drop=True)
        out["n_filters"] = out["model_id"].map(counts).astype("int64")
        return out

    def __repr__(self) -> str:
        return f"<RecordIndex: {self.size:,} filters in {len(self.row):,} runs of records>"

    def _repr_inline_(self, max_width: int) -> str:
        return f"RecordIndex ({len(self.row):,} runs)"


def _same_tables(a: Tables, b: Tables) -> bool:
    return a.records.equals(b.records) and a.models.equals(b.models) and a.grouping == b.grouping \
        and a.rules == b.rules


def _merge_runs(row, start, offset):
    """Join consecutive runs that continue one another (same record, next filter)."""
    if len(row) < 2:
        return row, start, offset
    cont = (row[1:] == row[:-1]) & (offset[1:] - offset[:-1] == start[1:] - start[:-1])
    keep = np.concatenate([[True], ~cont])
    return row[keep], start[keep], offset[keep]


def take_chunks(chunks: tuple, positions) -> tuple:
    """The chunks of ``x[positions]`` along a dask axis with ``chunks``, as dask's ``take`` makes them (dask 2024.x
    to 2026.x, ``dask/array/slicing.py:take`` and ``_shuffle.py:_shuffle``): the positions in groups of the average
    chunk, groups packed greedily up to ``array.chunk-size-tolerance`` times it; a full ``arange`` keeps ``chunks``,
    no positions give one empty chunk. Depends only on the number of positions; O(output chunks)."""
    from dask import config

    chunks = tuple(int(c) for c in chunks)
    pos = np.asarray(positions)
    n = int(pos.size)
    full = sum(chunks)
    if n == 0:
        return (0,)
    if n == full:
        pos = np.where(pos < 0, pos + full, pos)
        if pos[0] == 0 and np.all(np.diff(pos) == 1):
            return chunks
    average = int(full / len(chunks))
    tolerance = config.get("array.chunk-size-tolerance")
    limit = int(full / len(chunks) * tolerance)
    groups = [average] * (n // average) + ([n % average] if n % average else [])
    out, current = [], 0
    for g in groups:
        if current + g > limit and current > 0:
            out.append(current)
            current = g
        else:
            current += g
            if current > limit / tolerance:
                out.append(current)
                current = 0
    if current > 0:
        out.append(current)
    return tuple(out)


def runs_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The integer positions covered by runs ``[start, start + length)``, in order."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    shift = np.repeat(np.asarray(starts, np.int64) - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _per_filter(values: np.ndarray, starts: np.ndarray, stops: np.ndarray, chunks: tuple, name: str) -> da.Array:
    """A dask array repeating one value per run over the run's filters, block by block.

    Each block's task holds only the values of the runs that overlap it, so the graph stays small.
    """
    token = f"{name}-{tokenize(values, starts, stops, chunks)}"
    ends = np.cumsum(chunks, dtype=np.int64)
    los = ends - np.asarray(chunks, np.int64)
    r0s = np.searchsorted(stops, los, side="right")
    r1s = np.searchsorted(starts, ends, side="left")
    dsk = {}
    for i, (lo, hi, r0, r1) in enumerate(zip(los.tolist(), ends.tolist(), r0s.tolist(), r1s.tolist())):
        counts = np.minimum(stops[r0:r1], hi) - np.maximum(starts[r0:r1], lo)
        dsk[(token, i)] = (np.repeat, values[r0:r1].copy(), counts)
    graph = HighLevelGraph.from_collections(token, dsk, dependencies=[])
    return da.Array(graph, token, chunks=(tuple(chunks),), dtype=values.dtype, meta=np.empty(0, values.dtype))
