"""Groupings of records: group codes from per-record meta (pass 1), and exact sums into groups.

Everything here works on per-record arrays (O(records)); no pass over the data. :func:`groups` turns one or more
grouping keys into a code per record; :func:`group_sum` and :func:`group_comoments` add per-record statistics into
groups (co-moments exactly: within plus between records).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.store import format as fmt

DEPTH_EDGES = np.arange(0, 1.1, 0.1)
DEPTH_LABELS = ["[0.0, 0.1]"] + [f"({a / 10:.1f}, {(a + 1) / 10:.1f}]" for a in range(1, 10)]
#: Grouping keys that are no grouping coordinate: depth deciles, models, conv depths.
FIXED_KEYS = ("depth", "model", "model_id", "conv_depth")


@dataclass
class Groups:
    """A grouping of records: ``codes`` (per record, group index), the group ``labels``, per key the label of
    every group (``columns``), and ``left_out`` (per record: True when a key's label is missing, so that the record
    is in no group)."""

    by: list
    codes: np.ndarray
    labels: list
    columns: dict
    left_out: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.labels)

    def dropped(self, meta: xr.Dataset) -> dict:
        """``n_filters_dropped``, ``n_models_dropped``: the filters and the models (any of whose filters) left out
        for a missing label; ``missing_labels``: ``"dropped"`` or ``"kept"`` (as their own group)."""
        out = np.zeros(len(self.codes), bool) if self.left_out is None else self.left_out
        return {"n_filters_dropped": int(np.asarray(meta["n"].values)[out].sum()),
                "n_models_dropped": int(np.unique(np.asarray(meta["model_id"].values)[out]).size),
                "missing_labels": "kept" if self.left_out is None else "dropped"}


def grouping_names(meta: xr.Dataset) -> dict:
    """Grouping coordinate -> models-table column of per-record meta (pass 1's variables that carry labels)."""
    return {name: v.attrs.get("column", name) for name, v in meta.data_vars.items() if "labels" in v.attrs}


def depth_codes(conv_depth_norm: np.ndarray) -> np.ndarray:
    """Decile of conv_depth_norm (pandas.cut on numpy.arange(0, 1.1, 0.1), include_lowest). The float32 depth is
    first rounded to 7 decimals so that k/10 lands in the bin the reference's float64 value lands in."""
    x = np.round(np.asarray(conv_depth_norm, dtype=np.float64), 7)
    codes = pd.cut(x, DEPTH_EDGES, include_lowest=True, labels=False)
    return np.asarray(pd.Series(codes).fillna(-1), dtype=np.int64)


def _key_codes(meta: xr.Dataset, name: str, keep_missing: bool):
    """(code per record, labels, left out per record) of one key; the missing label (attr ``missing``) is no
    group unless ``keep_missing``: its records get code -1."""
    if name == "depth":
        return depth_codes(meta["conv_depth_norm"].values), list(DEPTH_LABELS), None
    if name in ("model", "model_id", "conv_depth"):
        col = "model_id" if name == "model" else name
        values = meta[col].values
        uniq, codes = np.unique(values, return_inverse=True)
        return codes.astype(np.int64), [str(u) for u in uniq], None
    codes, labels = meta[name].values.astype(np.int64), list(meta[name].attrs["labels"])
    missing = meta[name].attrs.get("missing")
    if keep_missing or missing not in labels:
        return codes, labels, None
    m = labels.index(missing)
    left_out = codes == m
    return np.where(left_out, -1, codes - (codes > m)), labels[:m] + labels[m + 1:], left_out


def groups(meta: xr.Dataset, by, keep_empty: bool = False, keep_missing: bool = False) -> Groups:
    """Group the records of ``meta`` (per-record meta from pass 1) by one key or a list of keys.

    Keys: a grouping coordinate or its column name, ``"depth"`` (deciles), ``"model"``, ``"conv_depth"``.
    Groups are the observed label combinations in code order (every combination when ``keep_empty``). Records whose
    label of a key is missing (the coordinate's ``missing`` attr) are in no group, as in a pandas ``groupby``
    (``left_out``), unless ``keep_missing``: then that label is a group like any other.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise InputError("by: give at least one grouping key.")
    names = [fmt.resolve_name(k, grouping_names(meta), meta, FIXED_KEYS) for k in keys]
    per_key = [_key_codes(meta, n, keep_missing) for n in names]
    sizes = [len(lab) for _, lab, _ in per_key]
    codes = np.stack([c for c, _, _ in per_key], axis=1) if per_key else np.zeros((0, 0), np.int64)
    left_out = None if keep_missing else np.zeros(len(codes), bool)
    for _, _, out in per_key:
        if out is not None:
            left_out |= out
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
    return Groups(by=names, codes=group_codes, labels=labels, columns=columns, left_out=left_out)


@numba.njit(nogil=True, cache=True)
def group_add_kernel(codes, values, out):
    """:func:`group_sum`'s loop: adds row ``r`` of ``values`` to row ``codes[r]`` of ``out`` (codes -1 skipped)."""
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
    group_add_kernel(np.ascontiguousarray(codes, np.int64), flat, out.reshape(n_groups, -1))
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
