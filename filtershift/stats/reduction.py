"""The reduction driver: per-record partials from dask blocks, tree-combined, then finalized.

A statistic is a :class:`Statistic` declared by three pure numpy steps (flox's chunk / combine / finalize):
``chunk(weights_block, record_block, *coord_blocks, params)`` returns a *partial* (a dict of arrays whose first axis
is the sorted, unique ``record`` ids present in the block), ``combine(*partials)`` merges partials given in block
order with :func:`merge`, and ``finalize(partial, **context)`` turns the merged partial into the result.
:func:`reduce` maps ``chunk`` over aligned blocks of ``weights`` and the coordinates with ``dask.delayed``,
tree-reduces with ``combine``, computes once on the current scheduler (threads, processes or a distributed client:
every task argument pickles) and finalizes. Its graph keys are named after the statistic (``moments-chunk-...``,
``moments-combine-...``), so a dashboard or a profile says which pass runs.

This module knows no particular statistic: the passes are declared in :mod:`filtershift.stats.moments`,
:mod:`filtershift.stats.histograms` and :mod:`filtershift.stats.quality.orthogonality_pass`;
:class:`filtershift.stats.cache.RecordStats` runs them and keeps their results.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np
import xarray as xr
from dask.base import tokenize

from filtershift import progress

SPLIT_EVERY = 8


def unchanged(part: dict) -> dict:
    """The finalize step of a statistic whose merged partial is already its result."""
    return part


@dataclass(frozen=True)
class Statistic:
    """A per-record reduction declared by its steps: ``chunk`` (one block to a partial), ``combine(*partials)``
    (any number of partials, in block order), ``finalize(partial, **context)`` (the merged partial to the result;
    ``context`` holds what the caller knows, e.g. results of earlier passes). ``fill`` gives, per field, the value
    of records absent from every block when the result is laid out on a list of records (default 0). ``totals``
    names the fields that are totals over the whole data rather than per record (merged by ``"total"``, see
    :func:`merge`; left as they are when the result is laid out on records). ``name`` names the pass's graph
    keys."""

    name: str
    chunk: Callable
    combine: Callable
    finalize: Callable = unchanged
    fill: dict = field(default_factory=dict)
    totals: tuple = ()


def runs(record: np.ndarray):
    """Runs of equal record ids in a block: ``(perm, ids, starts)``; ``perm`` sorts the block (``None`` when
    records are already contiguous and increasing, the store's normal layout)."""
    rec = np.asarray(record)
    if rec.size == 0:
        return None, np.zeros(0, np.int64), np.zeros(1, np.int64)
    perm = None
    change = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    ids = rec[np.concatenate([[0], change])]
    if np.any(ids[1:] <= ids[:-1]):
        perm = np.argsort(rec, kind="stable")
        rec = rec[perm]
        change = np.flatnonzero(rec[1:] != rec[:-1]) + 1
        ids = rec[np.concatenate([[0], change])]
    starts = np.concatenate([[0], change, [rec.size]]).astype(np.int64)
    return perm, ids.astype(np.int64), starts


def merge(parts, how: dict) -> dict:
    """Merge partials keyed by ``record`` (a sequence, in block order). ``how`` maps each field to ``"sum"``,
    ``"max"``, ``"min"``, ``"first"`` or ``("chan", n_field, sum_field)`` (co-moments, Chan et al.'s pairwise
    update); ``("chan_sum", n_field)`` is a plain sum that a co-moment refers to; ``"total"`` is a field that is
    not keyed by record (a total over the block, such as a 2D histogram of all its filters), summed over all
    partials.

    Blocks of the store's layout hold increasing records and share at most the one record a block edge cuts: those
    are joined with one concatenation per field, merging only the shared rows. Any other order is merged pairwise.
    """
    totals = [k for k, rule in how.items() if rule == "total"]
    if totals:
        keyed = merge([{k: v for k, v in p.items() if k not in totals} for p in parts],
                      {k: rule for k, rule in how.items() if k not in totals})
        return dict(keyed, **{k: functools.reduce(np.add, (p[k] for p in parts)) for k in totals})
    full = [p for p in parts if len(p["record"])]
    if len(full) <= 1:
        return full[0] if full else parts[0]
    if all(a["record"][-1] <= b["record"][0] for a, b in itertools.pairwise(full)):
        return _merge_ordered(full, how)
    return functools.reduce(lambda a, b: _merge_pair(a, b, how), full)


def _rows(part: dict, lo, hi) -> dict:
    return {k: v[lo:hi] for k, v in part.items()}


def _merge_ordered(parts: list, how: dict) -> dict:
    """Partials in record order, each sharing at most its first record with the one before."""
    pieces = {k: [] for k in parts[0]}
    tail = None
    for p in parts:
        if tail is not None and tail["record"][0] == p["record"][0]:
            tail = _merge_pair(tail, _rows(p, 0, 1), how)
            p = _rows(p, 1, None)
            if not len(p["record"]):
                continue
        for k, out in pieces.items():
            if tail is not None:
                out.append(tail[k])
            out.append(p[k][:-1])
        tail = _rows(p, -1, None)
    for k, out in pieces.items():
        out.append(tail[k])
    return {k: np.concatenate(v) for k, v in pieces.items()}


def _merge_pair(a: dict, b: dict, how: dict) -> dict:
    ia, ib = a["record"], b["record"]
    ids = np.union1d(ia, ib)
    pa, pb = np.searchsorted(ids, ia), np.searchsorted(ids, ib)
    ca, cb = np.isin(ia, ib, assume_unique=True), np.isin(ib, ia, assume_unique=True)
    out = {"record": ids}
    for name, rule in how.items():
        kind = rule if isinstance(rule, str) else rule[0]
        va, vb = a[name], b[name]
        res = np.empty((len(ids),) + va.shape[1:], dtype=np.result_type(va, vb))
        res[pa] = va
        res[pb[~cb]] = vb[~cb]
        both = pb[cb]
        if kind in ("sum", "chan_sum"):
            res[both] += vb[cb]
        elif kind == "max":
            res[both] = np.maximum(res[both], vb[cb])
        elif kind == "min":
            res[both] = np.minimum(res[both], vb[cb])
        elif kind == "chan":
            n_name, s_name = rule[1], rule[2]
            na = a[n_name][ca].astype(np.float64)
            nb = b[n_name][cb].astype(np.float64)
            tot = na + nb
            with np.errstate(invalid="ignore", divide="ignore"):
                delta = b[s_name][cb] / nb[:, None] - a[s_name][ca] / na[:, None]
                f = np.where((na > 0) & (nb > 0), na * nb / tot, 0.0)
            delta = np.nan_to_num(delta)
            res[both] += vb[cb] + delta[:, :, None] * delta[:, None, :] * f[:, None, None]
        elif kind != "first":
            raise ValueError(f"unknown merge rule {rule!r} for field {name!r}")
        out[name] = res
    return out


def _apply_chunk(stat_chunk, weights, record, *rest):
    return stat_chunk(np.asarray(weights), np.asarray(record), *rest)


def _apply_chunk_kw(stat_chunk, names, weights, record, *coords):
    return stat_chunk(np.asarray(weights), np.asarray(record), *coords, names=names)


def _aligned_blocks(ds: xr.Dataset, names) -> list:
    w = ds["weights"].data
    chunks = w.chunks[0]
    arrays = []
    for name in names:
        a = ds[name].data
        if not hasattr(a, "chunks"):
            import dask.array as da

            a = da.from_array(np.asarray(a), chunks=(chunks,))
        elif a.chunks[0] != chunks:
            a = a.rechunk((chunks,))
        arrays.append(a.to_delayed().ravel())
    return [w.to_delayed().ravel()] + arrays


def graph(ds: xr.Dataset, stat: Statistic, coords=("record",), params=None, names=None,
          split_every: int = SPLIT_EVERY, descending: bool = True):
    """The lazy pass (a ``dask.delayed`` whose value is the merged partial): ``stat.chunk`` mapped over aligned
    blocks and tree-combined, every key named ``<stat.name>-chunk-<position>-<token>`` or
    ``<stat.name>-combine-<level>-<position>-<token>``.

    ``params`` (basis, per-record results of earlier passes) becomes one shared graph key
    (``<stat.name>-params-<token>``), sent once per worker. ``names`` switches to keyword mode: the chunk receives
    the coordinate blocks and ``names=names``.

    ``descending`` sets the order the blocks are scheduled in, not the result: dask orders sibling tasks by key
    name, so the zero-padded position in each name makes a pass read runs of consecutive blocks downwards (True) or
    upwards (False), where hashed names alone gave a random order of the groups of ``split_every`` (dask still
    visits larger subtrees out of sequence; docs/design.md, Scan order). The tree (which blocks each combine merges,
    in which order) is the same either way, so the result is bit for bit the same.
    """
    blocks = _aligned_blocks(ds, coords)
    n = len(blocks[0])

    def position(i: int, count: int) -> str:
        return f"{(i if descending else count - 1 - i):08d}"

    if names is not None:
        parts = [dask.delayed(_apply_chunk_kw, pure=True)(
            stat.chunk, tuple(names), *bl,
            dask_key_name=f"{stat.name}-chunk-{position(i, n)}-{tokenize(stat.chunk, names, *bl)}")
            for i, bl in enumerate(zip(*blocks))]
    else:
        p = dask.delayed(params, name=f"{stat.name}-params-{tokenize(params)}", traverse=False)
        parts = [dask.delayed(_apply_chunk, pure=True)(
            stat.chunk, *bl, p, dask_key_name=f"{stat.name}-chunk-{position(i, n)}-{tokenize(stat.chunk, *bl, p)}")
            for i, bl in enumerate(zip(*blocks))]
    level = 0
    while len(parts) > 1:
        level += 1
        count = -(-len(parts) // split_every)
        parts = [dask.delayed(stat.combine, pure=True)(
            *parts[i:i + split_every],
            dask_key_name=f"{stat.name}-combine-{level}-{position(i // split_every, count)}-"
                          f"{tokenize(stat.combine, *parts[i:i + split_every])}")
            for i in range(0, len(parts), split_every)]
    return parts[0]


def reduce(ds: xr.Dataset, stat: Statistic, coords=("record",), params=None, names=None,
           split_every: int = SPLIT_EVERY, desc: str | None = None, records=None, context=None,
           descending: bool = True) -> dict:
    """One pass over ``ds``: compute :func:`graph` (blocks scheduled from the end when ``descending``), lay the
    partial out on ``records`` when given (absent records take ``stat.fill``), and return
    ``stat.finalize(partial, **context)``."""
    with progress.dask_progress(desc or stat.name):
        (out,) = dask.compute(graph(ds, stat, coords, params, names, split_every, descending))
    if records is not None:
        out = reindex(out, records, stat.fill, stat.totals)
    return stat.finalize(out, **(context or {}))


def reindex(part: dict, records: np.ndarray, fill=None, totals=()) -> dict:
    """A partial laid out on ``records`` (records absent from the partial get ``fill[field]``, default 0; the
    fields named in ``totals`` are not per record and stay as they are)."""
    ids = part["record"]
    if len(ids) == len(records) and np.array_equal(ids, records):
        return part
    fill = fill or {}
    pos = np.searchsorted(records, ids)
    out = {"record": records}
    for k, v in part.items():
        if k == "record":
            continue
        if k in totals:
            out[k] = v
            continue
        full = np.full((len(records),) + v.shape[1:], fill.get(k, 0), dtype=v.dtype)
        full[pos] = v
        out[k] = full
    return out
