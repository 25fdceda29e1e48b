"""The orthogonality pass: whole layers out of the store, each measured once it is complete.

Orthogonality needs every filter of a layer at once, so it is a chunk/combine pass of its own that only looks at
records whose in/out channels are known; a layer cut by a block edge is joined in ``combine``.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from filtershift.stats import reduction
from filtershift.stats.cache import RecordStats
from filtershift.stats.quality.layer import layer_orthogonality


def _ortho_chunk(weights, record, params) -> dict:
    """Orthogonality of the layers complete in this block; rows of layers cut by the block edge are kept."""
    perm, ids, starts = reduction.runs(record)
    known = params["record"]
    pos = np.searchsorted(known, ids)
    hit = np.isin(ids, known)
    keep_ids, values, pieces = [], [], []
    w = weights if perm is None else weights[perm]
    for j in np.flatnonzero(hit):
        rows = np.asarray(w[starts[j]:starts[j + 1]])
        keep_ids.append(ids[j])
        if len(rows) == params["n"][pos[j]]:
            values.append(layer_orthogonality(rows, params["out"][pos[j]]))
            pieces.append(None)
        else:
            values.append(np.nan)
            pieces.append(rows)
    return {"record": np.asarray(keep_ids, np.int64), "orthogonality": np.asarray(values, np.float64),
            "pieces": pieces, "params": params}


def _ortho_combine(*parts: dict) -> dict:
    """Merge partials in block order: pieces of a layer are joined, and measured once the layer is whole."""
    return functools.reduce(_ortho_pair, parts)


def _ortho_pair(a: dict, b: dict) -> dict:
    if len(b["record"]) == 0:
        return a
    if len(a["record"]) == 0:
        return b
    params = a["params"]
    ids = np.union1d(a["record"], b["record"])
    vals = np.full(len(ids), np.nan)
    pieces = [None] * len(ids)
    for part in (a, b):
        for r, v, p in zip(part["record"], part["orthogonality"], part["pieces"]):
            i = int(np.searchsorted(ids, r))
            if p is None:
                vals[i], pieces[i] = v, None
            else:
                pieces[i] = p if pieces[i] is None else np.concatenate([pieces[i], p])
    for i, r in enumerate(ids):
        if pieces[i] is not None:
            k = int(np.searchsorted(params["record"], r))
            if len(pieces[i]) == params["n"][k]:
                vals[i], pieces[i] = layer_orthogonality(pieces[i], params["out"][k]), None
    return {"record": ids, "orthogonality": vals, "pieces": pieces, "params": params}


ORTHOGONALITY = reduction.Statistic("orthogonality", chunk=_ortho_chunk, combine=_ortho_combine)


def _layer_shapes(recs: pd.DataFrame, present: np.ndarray) -> dict:
    """Records (among ``present``) whose channels are known and consistent: ids, filter count, out channels."""
    r = recs.set_index("record").reindex(present)
    out = pd.to_numeric(r["out_channels"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    inc = pd.to_numeric(r["in_channels"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    grp = pd.to_numeric(r["groups"], errors="coerce").fillna(1).to_numpy(dtype=np.float64, na_value=1.0)
    n = r["n"].to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (out >= 2) & (inc >= 1) & (grp >= 1) & (np.mod(inc, grp) == 0) & (out * inc / grp == n)
    return {"record": np.asarray(present, np.int64)[ok], "n": n[ok].astype(np.int64),
            "out": out[ok].astype(np.int64)}


def orthogonality(data, records: np.ndarray | None = None) -> pd.Series:
    """Orthogonality per record of a Dataset (or RecordStats) whose in/out channels are known; NaN elsewhere.

    One pass over the data (counted in ``RecordStats.passes``), and none when no record has known channels. Only
    those layers' rows are held in memory, each layer whole once. Rows of a layer must be in store order (as
    :func:`filtershift.open_store`, ``from_arrays`` and ``select`` leave them).
    """
    from filtershift.store.dataset import records as records_table

    stats = data if isinstance(data, RecordStats) else None
    ds = stats.ds if stats is not None else data
    recs = records_table(ds)
    present = recs["record"].to_numpy(np.int64) if records is None else np.asarray(records, np.int64)
    params = _layer_shapes(recs, present)
    result = pd.Series(np.nan, index=pd.Index(present, name="record"), name="orthogonality")
    if len(params["record"]) == 0:
        return result
    if stats is not None:
        part = stats.run(ORTHOGONALITY, params=params, desc="orthogonality")
    else:
        part = reduction.reduce(ds, ORTHOGONALITY, params=params, desc="orthogonality")
    result.loc[part["record"]] = part["orthogonality"]
    return result


def orthogonality_values(data, records: np.ndarray) -> np.ndarray:
    """:func:`orthogonality` of ``records`` as an array in their order."""
    return orthogonality(data, records).reindex(records).to_numpy(np.float64)
