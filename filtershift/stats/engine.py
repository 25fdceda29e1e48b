"""The reduction engine: per-record partials from dask blocks, tree-combined, and the cache of passes.

A statistic is a :class:`Statistic`: a pure numpy ``chunk(weights_block, record_block, *coord_blocks, params)``
returning a *partial* (a dict of arrays whose first axis is the sorted, unique ``record`` ids present in the block)
and a ``combine(*partials)`` merging partials given in block order with :func:`merge`. :func:`reduce` maps ``chunk``
over aligned blocks of ``weights`` and the coordinates with ``dask.delayed``, tree-reduces with ``combine`` and
computes once on the current scheduler (threads, processes or a distributed client: every task argument pickles).

:class:`RecordStats` holds the per-record results and runs each pass at most once per setting:
pass 1 moments (:mod:`moments`), pass 2 coefficient range and sparsity, pass 3 histograms (:mod:`histograms`).
The full analysis (basis, any number of groupings, drift, intervals, per-group bases) makes exactly 3 passes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass
from typing import Callable

import dask
import numba
import numpy as np
import pandas as pd
import xarray as xr

from filtershift import progress
from filtershift.errors import InputError
from filtershift.store import format as fmt
from filtershift.store.dataset import record_table
from filtershift.store.index import RecordIndex

SPLIT_EVERY = 8
DEPTH_EDGES = np.arange(0, 1.1, 0.1)
DEPTH_LABELS = ["[0.0, 0.1]"] + [f"({a / 10:.1f}, {(a + 1) / 10:.1f}]" for a in range(1, 10)]


@dataclass(frozen=True)
class Statistic:
    """A per-record reduction declared by its ``chunk`` and ``combine`` steps (finalize is done by the caller);
    ``combine(*partials)`` merges any number of partials given in block order."""

    name: str
    chunk: Callable
    combine: Callable


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
    update); ``("chan_sum", n_field)`` is a plain sum that a co-moment refers to.

    Blocks of the store's layout hold increasing records and share at most the one record a block edge cuts: those
    are joined with one concatenation per field, merging only the shared rows. Any other order is merged pairwise.
    """
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


def reduce(ds: xr.Dataset, stat: Statistic, coords=("record",), params=None, names=None,
           split_every: int = SPLIT_EVERY, desc: str | None = None) -> dict:
    """One pass over ``ds``: map ``stat.chunk`` over aligned blocks, tree-combine, compute; return the partial.

    ``params`` (basis, per-record results of earlier passes) becomes one shared graph key, sent once per worker.
    ``names`` switches to keyword mode: the chunk receives the coordinate blocks and ``names=names``.
    """
    blocks = _aligned_blocks(ds, coords)
    if names is not None:
        parts = [dask.delayed(_apply_chunk_kw, pure=True)(stat.chunk, tuple(names), *bl)
                 for bl in zip(*blocks)]
    else:
        p = dask.delayed(params, pure=True, traverse=False)
        parts = [dask.delayed(_apply_chunk, pure=True)(stat.chunk, *bl, p) for bl in zip(*blocks)]
    while len(parts) > 1:
        parts = [dask.delayed(stat.combine, pure=True)(*parts[i:i + split_every])
                 for i in range(0, len(parts), split_every)]
    with progress.dask_progress(desc or stat.name):
        (out,) = dask.compute(parts[0])
    return out


# -- groupings ------------------------------------------------------------------------------------------------------


@dataclass
class Groups:
    """A grouping of records: ``codes`` (per record, group index), the group ``labels`` and, per key, the
    label of every group (``columns``)."""

    by: list
    codes: np.ndarray
    labels: list
    columns: dict

    @property
    def size(self) -> int:
        return len(self.labels)


def grouping_names(meta: xr.Dataset) -> dict:
    """Grouping coordinate -> models-table column of per-record meta (pass 1's variables that carry labels)."""
    return {name: v.attrs.get("column", name) for name, v in meta.data_vars.items() if "labels" in v.attrs}


def _resolve(meta: xr.Dataset, key: str) -> str:
    if key in ("depth", "model", "model_id", "conv_depth"):
        return key
    names = grouping_names(meta)
    if key in names:
        return key
    for name, column in names.items():
        if column == key:
            return name
    if fmt.snake_case(key) in meta:
        return fmt.snake_case(key)
    choices = sorted(set(names) | {"depth", "model", "conv_depth"})
    raise InputError(f"unknown grouping {key!r}; choose one of {choices} (or the original column names).")


def depth_codes(conv_depth_norm: np.ndarray) -> np.ndarray:
    """Decile of conv_depth_norm (pandas.cut on numpy.arange(0, 1.1, 0.1), include_lowest). The float32 depth is
    first rounded to 7 decimals so that k/10 lands in the bin the reference's float64 value lands in."""
    x = np.round(np.asarray(conv_depth_norm, dtype=np.float64), 7)
    codes = pd.cut(x, DEPTH_EDGES, include_lowest=True, labels=False)
    return np.asarray(pd.Series(codes).fillna(-1), dtype=np.int64)


def _key_codes(meta: xr.Dataset, name: str):
    if name == "depth":
        return depth_codes(meta["conv_depth_norm"].values), list(DEPTH_LABELS)
    if name in ("model", "model_id", "conv_depth"):
        col = "model_id" if name == "model" else name
        values = meta[col].values
        uniq, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64), [str(u) for u in uniq]
    return meta[name].values.astype(np.int64), list(meta[name].attrs["labels"])


def groups(meta: xr.Dataset, by, keep_empty: bool = False) -> Groups:
    """Group the records of ``meta`` (per-record meta from pass 1) by one key or a list of keys.

    Keys: a grouping coordinate or its column name, ``"depth"`` (deciles), ``"model"``, ``"conv_depth"``.
    Groups are the observed label combinations in code order (every combination when ``keep_empty``).
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise InputError("by: give at least one grouping key.")
    names = [_resolve(meta, k) for k in keys]
    per_key = [_key_codes(meta, n) for n in names]
    sizes = [len(lab) for _, lab in per_key]
    codes = np.stack([c for c, _ in per_key], axis=1) if per_key else np.zeros((0, 0), np.int64)
    valid = np.all(codes >= 0, axis=1)
    if keep_empty:
        combos = np.array(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij")).reshape(len(sizes), -1).T
    else:
        combos = np.unique(codes[valid], axis=0) if valid.any() else np.zeros((0, len(sizes)), np.int64)
    flat_sizes = np.array(sizes, dtype=np.int64)
    mult = np.concatenate([np.cumprod(flat_sizes[::-1])[::-1][1:], [1]]).astype(np.int64)
    flat = codes @ mult
    combo_flat = combos @ mult
    order = np.argsort(combo_flat)
    combos, combo_flat = combos[order], combo_flat[order]
    pos = np.searchsorted(combo_flat, flat)
    pos = np.clip(pos, 0, max(len(combo_flat) - 1, 0))
    ok = valid & (len(combo_flat) > 0)
    if len(combo_flat):
        ok &= combo_flat[pos] == flat
    group_codes = np.where(ok, pos, -1).astype(np.int64)
    columns = {n: [per_key[i][1][c] for c in combos[:, i]] for i, n in enumerate(names)}
    labels = [" / ".join(parts) for parts in zip(*columns.values())] if len(combos) else []
    return Groups(by=names, codes=group_codes, labels=labels, columns=columns)


@numba.njit(nogil=True, cache=True)
def _group_add(codes, values, out):
    for r in range(codes.size):
        g = codes[r]
        if g >= 0:
            for k in range(values.shape[1]):
                out[g, k] += values[r, k]


def group_sum(codes: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of per-record ``values`` into groups (records with code -1 are left out), in record order: one loop
    over the records, with no copy of the values per group."""
    values = np.asarray(values)
    dtype = np.result_type(values, np.int64) if values.dtype.kind in "iub" else values.dtype
    out = np.zeros((n_groups,) + values.shape[1:], dtype=dtype)
    flat = np.ascontiguousarray(values, dtype=dtype).reshape(len(values), -1)
    _group_add(np.ascontiguousarray(codes, np.int64), flat, out.reshape(n_groups, -1))
    return out


def group_comoments(codes, n, sums, comoments, n_groups):
    """Count, sum and co-moment per group from per-record ones (exact: within plus between records)."""
    gn = group_sum(codes, n, n_groups)
    gs = group_sum(codes, sums, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        gmean = gs / gn[:, None]
        rmean = sums / np.asarray(n, np.float64)[:, None]
    keep = (codes >= 0) & (np.asarray(n) > 0)
    d = np.zeros_like(rmean)
    d[keep] = rmean[keep] - gmean[codes[keep]]
    between = np.asarray(n, np.float64)[:, None, None] * d[:, :, None] * d[:, None, :]
    gc = group_sum(codes, comoments + np.where(keep[:, None, None], between, 0.0), n_groups)
    return gn, gs, gc


# -- the per-record statistics --------------------------------------------------------------------------------------


def record_index(ds: xr.Dataset) -> RecordIndex | None:
    """The Dataset's record index, or None (a Dataset whose index was dropped, or one reopened from a copy)."""
    index = ds.xindexes.get("record")
    return index if isinstance(index, RecordIndex) else None


def _code_coords(ds: xr.Dataset) -> list:
    """Grouping coordinates: the index's (labels from its tables) and any other per-filter coordinate carrying a
    ``labels`` attribute (codes into those labels, or the labels themselves)."""
    index = record_index(ds)
    own = [n for n in index.tables.grouping if n in ds.coords] if index is not None else []
    return own + [name for name, c in ds.coords.items()
                  if name not in own and c.dims == ("filter",) and "labels" in c.attrs]


def _as_codes(values: np.ndarray, labels: list) -> np.ndarray:
    """Per-record values of a grouping coordinate as int32 codes into ``labels`` (-1: not a label)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int32)
    return pd.Index(list(labels)).get_indexer(values.astype(object)).astype(np.int32)


def basis_key(mean: np.ndarray, components: np.ndarray) -> str:
    h = hashlib.sha1(np.ascontiguousarray(mean, np.float64).tobytes())
    h.update(np.ascontiguousarray(components, np.float64).tobytes())
    return h.hexdigest()


class RecordStats:
    """Per-record sufficient statistics of one Dataset, each pass computed once and cached.

    - :meth:`moments` (pass 1): ``n``, ``scaled_sum``, ``scaled_comoment``, ``raw_sum``, ``raw_comoment``,
      ``raw_absmax``, ``filter_absmax_min``, ``raw_l1_sum``, ``raw_l2_sum`` plus the meta (``model_id``, ``conv_depth``,
      ``conv_depth_norm``) and every group code of each record.
    - :meth:`second` (pass 2, for a basis and a sparsity eps): ``coef_min``, ``coef_max``, ``sparse_count``,
      ``nonsparse_n``, ``nonsparse_sum``, ``nonsparse_comoment``; :meth:`sparsity` runs it with the data's own
      basis when none was asked for yet.
    - :meth:`histograms` (pass 3, for a basis and bins): ``counts`` (record, component, bin).

    Co-moments are centred sums of outer products (float64); ``passes`` counts the passes over the data.
    """

    def __init__(self, ds: xr.Dataset, split_every: int = SPLIT_EVERY):
        if "weights" not in ds:
            raise InputError("record_stats: the Dataset has no 'weights' variable; open a store with "
                             "filtershift.open_store or build one with filtershift.from_arrays.")
        self.ds = ds
        self.split_every = split_every
        self.passes = 0
        self._moments = None
        self._basis = None
        self._second = {}
        self._hist = {}

    def __repr__(self) -> str:
        return f"<RecordStats of {self.ds.sizes['filter']:,} filters, {self.passes} pass(es) run>"

    def _reduce(self, stat, **kw):
        self.passes += 1
        return reduce(self.ds, stat, split_every=self.split_every, **kw)

    def moments(self) -> xr.Dataset:
        """Pass 1 (once): per-record counts, sums, co-moments, norms and group codes."""
        if self._moments is None:
            from filtershift.stats import moments as mo

            index = record_index(self.ds)
            codes = _code_coords(self.ds)
            names = list(mo.META_FIELDS) + codes
            own = {n for n in names if index is not None and self.ds.xindexes.get(n) is index}
            rest = [n for n in names if n not in own]
            part = self._reduce(mo.MOMENTS, coords=["record", *rest], names=rest, desc="moments (pass 1/3)")
            if own:
                rows = record_table(self.ds).loc[part["record"]]
                part.update({n: rows[n].cat.codes.to_numpy(np.int32) if n in codes else rows[n].to_numpy()
                             for n in own})
            attrs = {n: ({"labels": list(index.tables.labels[n]), "column": index.tables.grouping[n]} if n in own
                         else dict(self.ds[n].attrs)) for n in codes}
            for n in codes:
                part[n] = _as_codes(part[n], attrs[n]["labels"])
            dims = {1: ("record",), 2: ("record", "k"), 3: ("record", "k", "k2")}
            data = {k: (dims[np.ndim(v)], v) for k, v in part.items() if k != "record"}
            m = xr.Dataset(data, coords={"record": part["record"].astype(np.int64)})
            for name in codes:
                m[name].attrs.update(attrs[name])
            m.attrs.update({"pass": 1,
                            "comoment": "centred sum of outer products over the record's filters (float64)",
                            "scaled": "filter / max|filter|; all-zero filters stay zero"})
            self._moments = m
        return self._moments

    def basis(self):
        """The PCA basis of these filters (from pass 1; no new pass)."""
        if self._basis is None:
            from filtershift.stats.basis import Basis

            self._basis = Basis().fit(self)
        return self._basis

    def second(self, basis=None, sparsity_eps: float = 0.01) -> xr.Dataset:
        """Pass 2 (once per basis and eps): coefficient min/max per record and component, and sparsity."""
        from filtershift.stats import moments as mo

        basis = basis if basis is not None else self.basis()
        if not (0.0 <= float(sparsity_eps) < 1.0):
            raise InputError(f"sparsity_eps must be in [0, 1); got {sparsity_eps!r}.")
        key = (basis_key(basis.mean_, basis.components_), float(sparsity_eps))
        if key not in self._second:
            m = self.moments()
            n = m["n"].values.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                raw_mean = np.nan_to_num(m["raw_sum"].values / n[:, None])
            clean = mo.clean_records(m["raw_absmax"].values, m["filter_absmax_min"].values, float(sparsity_eps))
            params = {"record": m["record"].values, "raw_absmax": m["raw_absmax"].values, "raw_mean": raw_mean,
                      "clean": clean, "eps": float(sparsity_eps), "mean": np.asarray(basis.mean_, np.float64),
                      "components": np.ascontiguousarray(basis.components_, np.float64)}
            part = self._reduce(mo.SECOND, params=params, desc="range and sparsity (pass 2/3)")
            part = mo.second_finalize(_reindex(part, m["record"].values), clean, m["n"].values,
                                      m["raw_sum"].values, m["raw_comoment"].values)
            dims = {"coef_min": ("record", "component"), "coef_max": ("record", "component"),
                    "sparse_count": ("record",), "nonsparse_n": ("record",), "nonsparse_sum": ("record", "k"),
                    "nonsparse_comoment": ("record", "k", "k2")}
            s = xr.Dataset({k: (dims[k], part[k]) for k in dims}, coords={"record": m["record"].values})
            s.attrs.update({"sparsity_eps": float(sparsity_eps), "basis": key[0], "pass": 2})
            self._second[key] = s
        return self._second[key]

    def sparsity(self, eps: float = 0.01) -> xr.Dataset:
        """Pass-2 sparsity statistics for ``eps``, reusing any pass 2 already run with that eps."""
        for (_, e), s in self._second.items():
            if e == float(eps):
                return s
        return self.second(None, eps)

    def coef_range(self, basis=None) -> tuple[float, float]:
        """[min, max] of all coefficients of all components over these filters (np.histogram's range rule for
        a degenerate range: widened by 0.5 each side)."""
        basis = basis if basis is not None else self.basis()
        key = basis_key(basis.mean_, basis.components_)
        s = next((v for (b, _), v in self._second.items() if b == key), None)
        if s is None:
            s = self.second(basis)
        lo, hi = float(np.min(s["coef_min"].values, initial=np.inf)), float(np.max(s["coef_max"].values,
                                                                                     initial=-np.inf))
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise InputError("the data hold no filters, so no coefficient range; select a non-empty subset.")
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        return lo, hi

    def histograms(self, basis=None, bins: int = 70, fine_bins: int = 0, range=None) -> xr.Dataset:
        """Pass 3 (once per basis, bins and range): per record x component x bin counts over one range."""
        from filtershift.stats import histograms as hi

        basis = basis if basis is not None else self.basis()
        bins, fine_bins = _check_bins(bins, "bins"), _check_bins(fine_bins, "fine_bins", allow_zero=True)
        lo, up = self.coef_range(basis) if range is None else (float(range[0]), float(range[1]))
        key = (basis_key(basis.mean_, basis.components_), bins, fine_bins, lo, up)
        if key not in self._hist:
            m = self.moments()
            edges = np.linspace(lo, up, bins + 1)
            fine = np.linspace(lo, up, fine_bins + 1) if fine_bins else np.zeros(0)
            params = {"mean": np.asarray(basis.mean_, np.float64),
                      "components": np.ascontiguousarray(basis.components_, np.float64),
                      "edges": edges, "fine_edges": fine}
            part = self._reduce(hi.HISTOGRAMS, params=params, desc="histograms (pass 3/3)")
            part = _reindex(part, m["record"].values)
            data = {"counts": (("record", "component", "bin"), part["counts"])}
            if fine_bins:
                data["fine_counts"] = (("record", "component", "fine_bin"), part["fine_counts"])
            h = xr.Dataset(data, coords={"record": m["record"].values, "bin_edges": ("bin_edge", edges)})
            if fine_bins:
                h = h.assign_coords(fine_edges=("fine_edge", fine))
            h.attrs.update({"basis": key[0], "range": [lo, up], "bins": bins, "pass": 3})
            self._hist[key] = h
        return self._hist[key]

    def compute(self, basis=None, bins: int = 70, sparsity_eps: float = 0.01) -> "RecordStats":
        """Run the three passes now (moments, range and sparsity, histograms); returns self."""
        basis = basis if basis is not None else self.basis()
        self.second(basis, sparsity_eps)
        self.histograms(basis, bins)
        return self


def _check_bins(bins, name, allow_zero=False) -> int:
    try:
        b = int(bins)
    except (TypeError, ValueError):
        b = -1
    if b != bins or b < (0 if allow_zero else 1):
        raise InputError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer; got {bins!r}.")
    return b


def _reindex(part: dict, records: np.ndarray) -> dict:
    """A partial laid out on ``records`` (records absent from the partial get empty values)."""
    ids = part["record"]
    if len(ids) == len(records) and np.array_equal(ids, records):
        return part
    pos = np.searchsorted(records, ids)
    out = {"record": records}
    for k, v in part.items():
        if k == "record":
            continue
        fill = np.inf if k == "coef_min" else -np.inf if k == "coef_max" else 0
        full = np.full((len(records),) + v.shape[1:], fill, dtype=v.dtype)
        full[pos] = v
        out[k] = full
    return out


def record_stats(ds: xr.Dataset, split_every: int = SPLIT_EVERY) -> RecordStats:
    """Lazy per-record statistics of ``ds``: nothing is computed until a pass is asked for."""
    return RecordStats(ds, split_every=split_every)


def as_stats(obj) -> RecordStats:
    """A RecordStats for a Dataset, a RecordStats, or a fitted Basis (its statistics)."""
    if isinstance(obj, RecordStats):
        return obj
    if isinstance(obj, xr.Dataset):
        return RecordStats(obj)
    stats = getattr(obj, "stats_", None)
    if isinstance(stats, RecordStats):
        return stats
    raise InputError(f"expected a filtershift Dataset or RecordStats, got {type(obj).__name__}.")
