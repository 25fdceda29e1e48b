"""Groupings of records: group membership from per-record meta (pass 1), and exact sums into groups.

Everything here works on per-record arrays (O(records)); no pass over the data. :func:`groups` turns one or more
grouping keys into a membership of the records in groups: a code per record when the groups are disjoint, or, with
a key ``NAME:each`` (a cell "A, B" makes its records members of A and of B), the 0/1 matrix records x groups as the
positions of its ones (``Groups.members``; a code per record is its special case). :func:`group_sum` and
:func:`group_comoments` add per-record statistics into groups through that membership (co-moments exactly: within
plus between records).
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
    """A grouping of records: ``codes`` (per record, group index; None when a record is in several groups), the
    group ``labels``, per key the label of every group (``columns``), ``left_out`` (per record: True when a key's
    label is missing, so that the record is in no group) and ``members``: the membership matrix (records x groups,
    0/1) as the (record positions, groups) of its ones, in record order then group order."""

    by: list
    codes: np.ndarray | None
    labels: list
    columns: dict
    left_out: np.ndarray | None = None
    members: tuple = ()

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def membership(self):
        """What :func:`group_sum` takes: the codes when every record is in one group at most (the special case,
        summed without a copy), else ``members``."""
        return self.members if self.codes is None else self.codes

    @property
    def overlapping(self) -> bool:
        """True when some record is in more than one group (a ``NAME:each`` key with multi-valued cells)."""
        return self.codes is None

    def atoms(self, n_records: int):
        """(code per record of its set of groups, -1 for none; the sets' membership in the groups as (set, group)
        positions, None when the groups are disjoint and the codes are the groups): what a pass that counts one
        group per record counts overlapping groups with (then :func:`group_sum` adds each set into its groups)."""
        if self.codes is not None:
            return self.codes, None
        rows, grp = self.members
        per_record = pd.Series(grp).groupby(rows).agg(tuple)
        set_of, sets = pd.factorize(per_record)
        codes = np.full(n_records, -1, np.int64)
        codes[per_record.index.to_numpy()] = set_of
        return codes, (np.repeat(np.arange(len(sets)), [len(s) for s in sets]),
                       np.array([g for s in sets for g in s], np.int64))

    def dropped(self, meta: xr.Dataset) -> dict:
        """``n_filters_dropped``, ``n_models_dropped``: the filters and the models (any of whose filters) left out
        for a missing label; ``missing_labels``: ``"dropped"`` or ``"kept"`` (as their own group)."""
        out = np.zeros(len(meta["n"]), bool) if self.left_out is None else self.left_out
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


def binned_codes(meta: xr.Dataset, key: str, tables, keep_missing: bool = False):
    """(code per record, labels, left out per record) of a numeric column cut into bins: ``NAME:quantiles=K``
    (K groups of about equal size, counted over the units the column describes: models for a models-table column,
    records otherwise), ``NAME:deciles`` (quantiles=10) or ``NAME:bins=e0,e1,...`` (fixed edges). Intervals are
    right-closed, the first one includes its lower edge (pandas.cut / qcut). A missing value is in no group unless
    ``keep_missing`` (then the group ``missing``). ``tables()`` returns the (records, models) tables."""
    name, _, rule = key.partition(":")
    if tables is None:
        raise InputError(f"{key}: binned groupings need the store's tables; pass a Dataset or its RecordStats.")
    records, models = tables()
    rec = records.set_index("record")
    ids = np.asarray(meta["record"].values)
    if name in ("conv_depth_norm", "conv_depth") or (name in rec.columns and name not in models.columns):
        values = meta[name].values if name in meta else rec[name].reindex(ids).to_numpy()
        per_model = None
    elif name in models.columns and name != "model_id":
        by_model = models.set_index("model_id")[name]
        values = by_model.reindex(np.asarray(meta["model_id"].values)).to_numpy()
        per_model = by_model
    else:
        numeric = sorted({str(c) for c in models.columns if pd.api.types.is_numeric_dtype(models[c])}
                         | {str(c) for c in rec.columns if pd.api.types.is_numeric_dtype(rec[c])}
                         | {"conv_depth_norm", "conv_depth"})
        raise InputError(f"{key}: no numeric column {name!r}; choose one of {numeric}.")
    try:
        values = np.asarray(pd.to_numeric(pd.Series(values), errors="raise"), np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{key}: column {name!r} is not numeric; group by it without ':' instead.") from None
    kind, _, arg = rule.partition("=")
    if kind in ("quantiles", "deciles"):
        k = 10 if kind == "deciles" else _positive_int(arg, key)
        sample = values if per_model is None else pd.to_numeric(per_model, errors="coerce").to_numpy(np.float64)
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            raise InputError(f"{key}: column {name!r} has no finite value.")
        edges = np.unique(np.quantile(sample, np.linspace(0, 1, k + 1)))
    elif kind == "bins":
        try:
            edges = np.array([float(v) for v in arg.split(",")])
        except ValueError:
            raise InputError(f"{key}: bins=e0,e1,... takes numbers separated by commas.") from None
        if len(edges) < 2 or not np.all(np.diff(edges) > 0):
            raise InputError(f"{key}: bins needs at least two increasing edges.")
    else:
        raise InputError(f"{key}: unknown binning {rule!r}; use NAME:quantiles=K, NAME:deciles or "
                         "NAME:bins=e0,e1,...")
    if len(edges) < 2:
        edges = np.array([edges[0], edges[0]])
        codes = np.where(np.isfinite(values), 0, -1)
        labels = [f"[{edges[0]:.6g}]"]
    else:
        codes = np.asarray(pd.Series(pd.cut(values, edges, include_lowest=True, labels=False)).fillna(-1), np.int64)
        labels = [("[" if i == 0 else "(") + f"{edges[i]:.6g}, {edges[i + 1]:.6g}]" for i in range(len(edges) - 1)]
    missing = codes < 0
    if not missing.any():
        return codes, labels, None
    if keep_missing:
        return np.where(missing, len(labels), codes), labels + ["missing"], None
    return codes, labels, missing


def _positive_int(text: str, key: str) -> int:
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise InputError(f"{key}: quantiles=K takes a whole number K >= 1.")
    return k


def groups(meta: xr.Dataset, by, keep_empty: bool = False, keep_missing: bool = False,
           tables=None) -> Groups:
    """Group the records of ``meta`` (per-record meta from pass 1) by one key or a list of keys.

    Keys: a grouping coordinate or its column name, ``"depth"`` (deciles), ``"model"``, ``"conv_depth"``, or a
    numeric column binned (:func:`binned_codes`: ``"total_filters:quantiles=5"``, ``"conv_depth_norm:deciles"``,
    ``"in_channels:bins=0,64,256,4096"``; ``tables`` returns (records, models) of the store, called for those
    only).
    Groups are the observed label combinations in code order (every combination when ``keep_empty``). Records whose
    label of a key is missing (the coordinate's ``missing`` attr) are in no group, as in a pandas ``groupby``
    (``left_out``), unless ``keep_missing``: then that label is a group like any other.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if not keys:
        raise InputError("by: give at least one grouping key.")
    names, per_key = [], []
    for k in keys:
        if isinstance(k, str) and k.partition(":")[2] == "each":
            names.append(k)
            per_key.append(each_codes(meta, k, keep_missing))
        elif isinstance(k, str) and ":" in k:
            names.append(k)
            per_key.append(binned_codes(meta, k, tables, keep_missing))
        else:
            names.append(fmt.resolve_name(k, grouping_names(meta), meta, FIXED_KEYS))
            per_key.append(_key_codes(meta, names[-1], keep_missing))
    sizes = [len(lab) for _, lab, _ in per_key]
    n_records = len(meta["n"])
    row_record, columns_of_rows = np.arange(n_records), []
    for c, _, _ in per_key:
        if isinstance(c, tuple):  # (record positions, codes): one row per record and value of a multi-valued cell
            rows, take = _expand(row_record, c[0])
            row_record, columns_of_rows = row_record[rows], [col[rows] for col in columns_of_rows] + [c[1][take]]
        else:
            columns_of_rows.append(c[row_record])
    codes = np.stack(columns_of_rows, axis=1)
    left_out = None if keep_missing else np.zeros(n_records, bool)
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
    members = (row_record[ok], group_codes[ok])
    if len(row_record) > n_records and np.bincount(members[0], minlength=n_records).max(initial=0) > 1:
        per_record = None
    else:
        per_record = np.full(n_records, -1, np.int64)
        per_record[members[0]] = members[1]
    return Groups(by=names, codes=per_record, labels=labels, columns=columns, left_out=left_out, members=members)


def _expand(keys: np.ndarray, positions: np.ndarray):
    """Join ``keys`` with sorted ``positions`` (every key present): (index into keys, index into positions) of every
    pair with equal values, in the order of keys and then of positions."""
    counts = np.bincount(positions, minlength=int(keys.max(initial=-1)) + 1)
    starts = np.cumsum(counts) - counts
    per_key = counts[keys]
    rows = np.repeat(np.arange(len(keys)), per_key)
    offset = np.arange(len(rows)) - np.repeat(np.cumsum(per_key) - per_key, per_key)
    return rows, starts[keys[rows]] + offset


def each_codes(meta: xr.Dataset, key: str, keep_missing: bool = False):
    """(membership, labels, left out per record) of ``NAME:each``: a label coordinate whose cells list several
    values ("A, B"). A cell is split on commas, its parts stripped and empty parts dropped; its records are members
    of the group of each part, with all their filters. The groups are the parts, sorted. A missing cell (or one
    without a part) is in no group unless ``keep_missing`` (then the last group, the coordinate's missing label).
    The membership is (record positions, codes), one entry per record and part, and one code -1 for a record in no
    group."""
    name = key.partition(":")[0]
    names = grouping_names(meta)
    try:
        resolved = fmt.resolve_name(name, names, [n for n in meta.data_vars if n in names])
    except InputError as e:
        raise InputError(f"{key}: ':each' splits the cells of a label column on commas; {e}") from None
    attrs = meta[resolved].attrs
    missing = attrs.get("missing")
    parts = [[] if lab == missing else sorted({p.strip() for p in str(lab).split(",")} - {""})
             for lab in attrs["labels"]]
    labels = sorted({p for ps in parts for p in ps})
    code = {lab: i for i, lab in enumerate(labels)}
    none = -1
    if keep_missing and any(not ps for ps in parts):
        label = missing or fmt.MISSING_LABEL
        while label in code:
            label += " (missing)"
        labels.append(label)
        none = len(labels) - 1
    per_label = [[code[p] for p in ps] or [none] for ps in parts]
    label_of = np.repeat(np.arange(len(parts)), [len(c) for c in per_label])
    label_codes = np.array([c for cs in per_label for c in cs], np.int64)
    rows, take = _expand(np.asarray(meta[resolved].values, np.int64), label_of)
    values = label_codes[take]
    left_out = None if keep_missing else np.bincount(rows[values < 0], minlength=len(meta["n"])) > 0
    return (rows, values), labels, left_out if left_out is not None and left_out.any() else None


@numba.njit(nogil=True, cache=True)
def group_add_kernel(rows, codes, values, out):
    """:func:`group_sum`'s loop: adds row ``rows[i]`` of ``values`` to row ``codes[i]`` of ``out`` (codes -1
    skipped)."""
    for i in range(codes.size):
        g = codes[i]
        if g >= 0:
            r = rows[i]
            for k in range(values.shape[1]):
                out[g, k] += values[r, k]


def as_members(codes) -> tuple:
    """(record positions, groups) of a membership: ``codes`` itself when a pair, else one code per record."""
    if isinstance(codes, tuple):
        return codes
    codes = np.asarray(codes)
    return np.arange(len(codes)), codes


def group_sum(codes, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of per-record ``values`` into groups, in record order: one loop over the records, with no copy of the
    values per group. ``codes``: one group per record (-1: none) or a membership (record positions, groups) in
    which a record may be in several groups (:attr:`Groups.members`)."""
    rows, codes = as_members(codes)
    values = np.asarray(values)
    dtype = np.result_type(values, np.int64) if values.dtype.kind in "iub" else values.dtype
    out = np.zeros((n_groups,) + values.shape[1:], dtype=dtype)
    flat = np.ascontiguousarray(values, dtype=dtype).reshape(len(values), -1)
    group_add_kernel(np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(codes, np.int64), flat,
                     out.reshape(n_groups, -1))
    return out


def group_comoments(codes, n, sums, comoments, n_groups):
    """Count, sum and co-moment per group from per-record ones (exact: within plus between records); ``codes`` as
    for :func:`group_sum`."""
    rows, grp = as_members(codes)
    gn = group_sum((rows, grp), n, n_groups)
    gs = group_sum((rows, grp), sums, n_groups)
    n = np.asarray(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gmean = gs / gn[:, None]
        rmean = sums[rows] / np.asarray(n[rows], np.float64)[:, None]
    keep = (grp >= 0) & (n[rows] > 0)
    d = np.zeros_like(rmean)
    d[keep] = rmean[keep] - gmean[grp[keep]]
    between = np.asarray(n[rows], np.float64)[:, None, None] * d[:, :, None] * d[:, None, :]
    own = comoments if not isinstance(codes, tuple) else comoments[rows]
    gc = group_sum((np.arange(len(rows)), grp), own + np.where(keep[:, None, None], between, 0.0), n_groups)
    return gn, gs, gc
