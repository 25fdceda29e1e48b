"""Selection of runs of filters as slices of blocks: O(runs + chunks), never one integer per selected filter.

``ds.sel`` with a non-contiguous selection hands xarray the position of every selected filter, and dask's fancy
indexing then costs O(selected filters) in time and memory (a minute and 3 GiB for 4e7 filters; see
BENCHMARKS.md). Here a selection is a list of runs ``[start, start + length)`` of the ``filter`` dimension: each run
is cut at the input's block edges into pieces, consecutive pieces are packed into output chunks of at most the
input's largest chunk (a whole input block stays one chunk), and each output chunk is one task that concatenates
slices of its input blocks. The graph has one key per output chunk, in one layer; the index follows the runs
(:meth:`filtershift.store.index.RecordIndex.take_runs`).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from filtershift.errors import InputError


def normalise_runs(starts, lengths, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs as int64 arrays, empty runs dropped, checked against ``size`` (negative starts are not allowed)."""
    starts, lengths = np.asarray(starts, np.int64).ravel(), np.asarray(lengths, np.int64).ravel()
    if starts.shape != lengths.shape:
        raise InputError(f"runs need one length per start; got {len(starts)} starts and {len(lengths)} lengths.")
    keep = lengths > 0
    if (lengths < 0).any():
        raise InputError("runs have negative lengths; a run is (start, length) with length >= 0.")
    starts, lengths = starts[keep], lengths[keep]
    if len(starts) and (starts.min() < 0 or (starts + lengths).max() > size):
        raise InputError(f"runs reach outside the {size} filters of this Dataset.")
    return starts, lengths


def runs_of_positions(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs (starts, lengths) of consecutive positions, in the order given (O(positions) in numpy)."""
    pos = np.asarray(pos, np.int64)
    if pos.size == 0:
        return pos[:0], pos[:0]
    edge = np.flatnonzero(np.diff(pos) != 1) + 1
    firsts = np.concatenate([[0], edge])
    lasts = np.concatenate([edge, [pos.size]])
    return pos[firsts], lasts - firsts


def pieces(starts: np.ndarray, lengths: np.ndarray, chunks: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs cut at the block edges of ``chunks``: (block, first row in the block, stop row in the block), in
    order; O(runs + blocks)."""
    ends = np.cumsum(np.asarray(chunks, np.int64))
    los = ends - np.asarray(chunks, np.int64)
    stops = starts + lengths
    b0 = np.searchsorted(ends, starts, side="right")
    b1 = np.searchsorted(ends, stops - 1, side="right")
    counts = b1 - b0 + 1
    run = np.repeat(np.arange(len(starts)), counts)
    block = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + b0[run]
    lo = np.maximum(starts[run], los[block]) - los[block]
    hi = np.minimum(stops[run], ends[block]) - los[block]
    return block, lo, hi


def pack(block: np.ndarray, lo: np.ndarray, hi: np.ndarray, chunks: tuple, limit: int) -> list[tuple[int, int]]:
    """Group consecutive pieces into output chunks of at most ``limit`` rows: ``[(first piece, stop piece), ...]``.
    A piece that is a whole input block starts and ends its own chunk, so whole blocks keep their chunking."""
    sizes = (hi - lo).tolist()
    whole = ((lo == 0) & (hi == np.asarray(chunks, np.int64)[block])).tolist() if len(block) else []
    groups, first, total = [], 0, 0
    for i, (n, w) in enumerate(zip(sizes, whole)):
        if i > first and (w or total + n > limit):
            groups.append((first, i))
            first, total = i, 0
        total += n
        if w:
            groups.append((first, i + 1))
            first, total = i + 1, 0
    if first < len(sizes):
        groups.append((first, len(sizes)))
    return groups


def _concat_slices(bounds: np.ndarray, axis: int, *blocks):
    """One output chunk: ``blocks[i][lo:hi]`` along ``axis`` for each row ``(lo, hi)`` of ``bounds``, joined."""
    cut = [slice(None)] * blocks[0].ndim
    parts = []
    for block, (lo, hi) in zip(blocks, bounds.tolist()):
        cut[axis] = slice(lo, hi)
        parts.append(block[tuple(cut)])
    return np.concatenate(parts, axis=axis)


def take_runs(x: da.Array, starts, lengths, axis: int = 0) -> da.Array:
    """``x`` restricted to the runs ``[start, start + length)`` along ``axis``, in order, as one dask array whose
    graph has one task per output chunk (slices of input blocks, concatenated); output chunks are at most the
    input's largest chunk along ``axis``. Equal to ``x[np.concatenate([np.arange(s, s + n) ...])]``."""
    axis = axis % x.ndim
    starts, lengths = normalise_runs(starts, lengths, x.shape[axis])
    chunks = x.chunks[axis]
    block, lo, hi = pieces(starts, lengths, chunks)
    groups = pack(block, lo, hi, chunks, max(chunks) if chunks else 0)
    if not groups:
        cut = [slice(None)] * x.ndim
        cut[axis] = slice(0, 0)
        return x[tuple(cut)]
    name = f"take-runs-{tokenize(x, starts, lengths, axis)}"
    out_chunks = tuple(int((hi[a:b] - lo[a:b]).sum()) for a, b in groups)
    others = [range(n) for i, n in enumerate(x.numblocks) if i != axis]
    dsk = {}
    for j, (a, b) in enumerate(groups):
        bounds = np.stack([lo[a:b], hi[a:b]], axis=1)
        whole = b - a == 1 and lo[a] == 0 and hi[a] == chunks[block[a]]
        for rest in np.ndindex(*[len(r) for r in others]):
            out_key = (name, *rest[:axis], j, *rest[axis:])
            in_keys = [(x.name, *rest[:axis], int(i), *rest[axis:]) for i in block[a:b]]
            dsk[out_key] = in_keys[0] if whole else (_concat_slices, bounds, axis, *in_keys)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    new = list(x.chunks)
    new[axis] = out_chunks
    return da.Array(graph, name, chunks=tuple(new), dtype=x.dtype, meta=x._meta)


def select_runs(ds: xr.Dataset, starts, lengths, dim: str = "filter") -> xr.Dataset:
    """``ds`` restricted to runs of ``dim`` (see :func:`take_runs`): dask variables along ``dim`` by slices of
    blocks, in-memory ones by positions, the record index and its coordinates by :meth:`RecordIndex.take_runs`.
    Equal to ``ds.isel({dim: positions of the runs})``; costs O(runs + chunks) for dask variables."""
    from filtershift.store.dataset import record_index

    index = record_index(ds)
    starts, lengths = normalise_runs(starts, lengths, index.size)
    weights = ds.variables.get("weights")
    chunks = index.chunks
    if weights is not None and isinstance(weights.data, da.Array) and weights.dims[0] == dim:
        chunks = weights.data.chunks[0]                 # the coordinates' chunks follow weights' (e.g. rechunked)
    block, lo, hi = pieces(starts, lengths, chunks)
    groups = pack(block, lo, hi, chunks, max(chunks) if chunks else 0)
    out_chunks = tuple(int((hi[a:b] - lo[a:b]).sum()) for a, b in groups) or (0,)
    new_index = index.take_runs(starts, lengths, out_chunks)
    names = set(index.tables.names)
    coords = xr.Coordinates(new_index.create_variables({n: ds.variables[n] for n in names if n in ds.variables}),
                            indexes={n: new_index for n in names})
    positions = None
    variables = {}
    for name, var in ds.variables.items():
        if name in names:
            continue
        if dim in var.dims:
            axis = var.dims.index(dim)
            if isinstance(var.data, da.Array):
                data = take_runs(var.data, starts, lengths, axis)
            else:
                if positions is None:
                    from filtershift.store.index import runs_positions

                    positions = runs_positions(starts, lengths)
                data = np.take(np.asarray(var.data), positions, axis=axis)
            var = xr.Variable(var.dims, data, var.attrs, var.encoding)
        variables[name] = var
    other = {n: v for n, v in variables.items() if n in ds.coords}
    out = xr.Dataset({n: v for n, v in variables.items() if n not in ds.coords}, coords=coords, attrs=ds.attrs)
    if other:
        out = out.assign_coords(other)
    return out
