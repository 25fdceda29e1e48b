"""Filter quality and degeneration: sparsity, variance entropy, orthogonality and weight norms per layer.

The definitions are those of torchconvquality 0.3.0 (Gavrikov & Keuper's library; see ``docs/quality.md`` for the
few places where filtershift's value differs and why). Every metric except orthogonality is *finalized* from the
per-record statistics of the engine's passes (no pass of its own): pass 1 gives ``n``, the raw sum and co-moment,
``max |w|`` and the sums of the l1/l2 norms; pass 2 (for ``sparsity_eps``) the count of sparse filters and the
co-moment of the non-sparse ones. Orthogonality needs whole layers, so it is one extra chunk/combine pass that only
looks at records whose in/out channels are known.

:func:`finalize` is vectorised over records; :func:`layer_metrics` computes the same metrics for one layer held in
memory (it builds the same statistics with numpy and calls :func:`finalize`).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats import reduction
from filtershift.stats.cache import RecordStats, as_stats
from filtershift.stats.grouping import DEPTH_LABELS, depth_codes, grouping_names
from filtershift.stats.moments import K, comoment

#: torchconvquality's entropy threshold (a logistic in log2 n fitted to a "min distribution"): l, x0, k, b.
THRESHOLD_PARAMS = (1.2618047, 2.30436435, 0.88767525, -0.31050834)
#: The per-layer metrics, in table order.
METRICS = ("sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean",
           "variance_entropy_clean_norm", "orthogonality", "l1_norm", "l2_norm", "l1_norm_std", "l2_norm_std")
#: Rows of the Gram matrix computed at once by :func:`layer_orthogonality` (bounds its memory).
GRAM_ROWS = 1024


# -- finalize: metrics from per-record statistics ------------------------------------------------------------------


def entropy_threshold(n) -> np.ndarray:
    """torchconvquality's entropy threshold for ``n`` filters, ``height / (1 + exp(-k (log2 n - x0))) + b``.

    It is negative for n <= 2 and equals ``b`` for n = 0 (log2 0 = -inf), as in the reference.
    """
    height, x0, k, b = THRESHOLD_PARAMS
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return height / (1.0 + np.exp(-k * (np.log2(n) - x0))) + b


def variance_entropy(comoment, n) -> np.ndarray:
    """Base-10 entropy of the eigenvalue shares of ``comoment / (n - 1)`` per record (vectorised).

    ``comoment`` (..., 9, 9) is the centred sum of outer products of the raw filters. As in torchconvquality: 0 for
    n = 0 and for filters that are all equal (zero variance), NaN for n = 1 (the variance of one filter divides by
    n - 1 = 0). Zero shares contribute 0 (0 log 0 = 0); rounding-level negative eigenvalues count as 0.
    """
    com = np.asarray(comoment, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), com.shape[:-2])
    lam = np.clip(np.linalg.eigvalsh(com), 0.0, None) if com.size else np.zeros(com.shape[:-1])
    den = lam.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = lam / np.where(den > 0, den, 1.0)[..., None]
        terms = np.where(p > 0, p * np.log10(np.where(p > 0, p, 1.0)), 0.0)
    out = -terms.sum(axis=-1)
    return np.where(n == 1, np.nan, np.where(den > 0, out, 0.0)) + 0.0


def weight_std(n, raw_sum, raw_comoment) -> np.ndarray:
    """Standard deviation (ddof 0) of all 9 n weights of each record, from its sum and co-moment."""
    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(raw_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = s / n[:, None]
        m = s.sum(axis=1) / (K * n)
        ss = np.trace(np.asarray(raw_comoment, np.float64), axis1=1, axis2=2) + n * ((mu - m[:, None]) ** 2).sum(1)
        return np.sqrt(np.clip(ss, 0.0, None) / (K * n))


def finalize(n, raw_sum, raw_comoment, raw_l1_sum, raw_l2_sum, sparse_count, nonsparse_n,
             nonsparse_comoment) -> dict:
    """Per-record metrics (arrays over records) from the statistics of passes 1 and 2.

    Returns ``n``, ``n_nonsparse``, ``sparsity``, ``variance_entropy`` and ``_norm``, ``variance_entropy_clean``
    and ``_norm`` (entropy of the non-sparse filters, normalised by the threshold of their count), the mean
    per-filter ``l1_norm`` and ``l2_norm`` and the same divided by the record's weight standard deviation
    (``*_std``: scale-free, comparable across models trained at different weight scales). NaN where undefined.
    """
    n = np.asarray(n, dtype=np.int64)
    nn = np.asarray(nonsparse_n, dtype=np.int64)
    nf = n.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ve = variance_entropy(raw_comoment, n)
        vec = variance_entropy(nonsparse_comoment, nn)
        l1 = np.asarray(raw_l1_sum, np.float64) / nf
        l2 = np.asarray(raw_l2_sum, np.float64) / nf
        sd = weight_std(n, raw_sum, raw_comoment)
        sd = np.where(sd > 0, sd, np.nan)
        return {
            "n": n, "n_nonsparse": nn,
            "sparsity": np.asarray(sparse_count, np.float64) / nf,
            "variance_entropy": ve, "variance_entropy_norm": ve / entropy_threshold(n),
            "variance_entropy_clean": vec, "variance_entropy_clean_norm": vec / entropy_threshold(nn),
            "l1_norm": l1, "l2_norm": l2, "l1_norm_std": l1 / sd, "l2_norm_std": l2 / sd,
        }


# -- one layer in memory -------------------------------------------------------------------------------------------


def _check_eps(sparsity_eps) -> float:
    try:
        eps = float(sparsity_eps)
    except (TypeError, ValueError):
        eps = -1.0
    if not 0.0 < eps < 1.0:
        raise InputError(f"sparsity_eps must be in (0, 1); got {sparsity_eps!r} (torchconvquality replaces a zero "
                         "threshold by 1, so eps = 0 would mark every filter with all |w| < 1 sparse).")
    return eps


def sparse_mask(w, sparsity_eps: float = 0.01) -> np.ndarray:
    """Filters (rows of ``w``) whose every |w| is below ``eps * max |w|`` of the layer (all of them if the layer is
    zero). The threshold is rounded to the dtype of ``w`` before comparing, as torch compares a tensor with a
    Python float."""
    w = np.asarray(w)
    eps = _check_eps(sparsity_eps)
    amax = float(np.abs(w).max()) if w.size else 0.0
    t = amax * eps
    if t == 0:
        t = 1.0
    return np.all(np.abs(w) < w.dtype.type(t), axis=1)


def layer_orthogonality(w, out_channels: int) -> float:
    """1 - mean |cosine similarity| between the out-channel weight vectors of one layer (off-diagonal pairs).

    ``w`` holds the layer's filters in PyTorch order (out, in/groups, 3, 3) or as (out * in/groups, 9) rows.
    As torchconvquality: an all-zero out-channel keeps a zero vector, so its diagonal term |0 - 1| counts in the
    sum. NaN for fewer than 2 out channels (the reference divides by zero there).
    """
    out = int(out_channels)
    a = np.asarray(w, dtype=np.float64)
    if out < 2 or a.size == 0 or a.size % out:
        return float("nan")
    a = a.reshape(out, -1)
    norm = np.linalg.norm(a, axis=1)
    a = a / np.where(norm > 0, norm, 1.0)[:, None]
    total = 0.0
    for lo in range(0, out, GRAM_ROWS):
        g = a[lo:lo + GRAM_ROWS] @ a.T
        idx = np.arange(lo, min(lo + GRAM_ROWS, out))
        g[idx - lo, idx] -= 1.0
        total += np.abs(g).sum()
    return float(1.0 - total / (out * (out - 1)))


def layer_metrics(w, sparsity_eps: float = 0.01, out_channels: int | None = None) -> dict:
    """All metrics of one layer held in memory: ``w`` (out, in/groups, 3, 3), (n, 3, 3) or (n, 9).

    The 4-d shape gives the out channels for orthogonality; otherwise pass ``out_channels`` (NaN when unknown).

    Parameters
    ----------
    w : array_like
        The layer's finite weights, shape (out, in/groups, 3, 3), (n, 3, 3) or (n, 9).
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|.
    out_channels : int, optional
        Number of output channels, for orthogonality; taken from a 4-d ``w`` when not given.

    Returns
    -------
    dict
        ``n``, ``n_nonsparse`` (int) and the float metrics of :data:`METRICS` (``sparsity``, ``variance_entropy``
        and its ``_norm``, ``_clean`` and ``_clean_norm`` variants, ``orthogonality``, ``l1_norm``, ``l2_norm``,
        ``l1_norm_std``, ``l2_norm_std``).

    Raises
    ------
    filtershift.errors.InputError
        If ``w`` has another shape or holds NaN or infinite values.
    """
    a = np.asarray(w)
    if a.ndim == 4 and a.shape[2:] == (3, 3):
        out_channels = a.shape[0] if out_channels is None else out_channels
    if a.ndim >= 2 and a.shape[-2:] == (3, 3):
        a = a.reshape(-1, K)
    if a.ndim != 2 or a.shape[1] != K:
        raise InputError(f"w has shape {np.shape(w)}; expected (out, in, 3, 3), (n, 3, 3) or (n, 9).")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("w holds NaN or infinite values; the metrics are defined for finite weights only.")
    mask = sparse_mask(a, sparsity_eps)
    raw = a.astype(np.float64)
    keep = raw[~mask]
    res = finalize(np.array([len(raw)]), raw.sum(0)[None], comoment(raw)[None], [np.abs(raw).sum()],
                   [np.sqrt((raw ** 2).sum(1)).sum()], [int(mask.sum())], [len(keep)], comoment(keep)[None])
    out = {k: (int(v[0]) if v.dtype.kind == "i" else float(v[0])) for k, v in res.items()}
    out["orthogonality"] = (layer_orthogonality(raw, out_channels) if out_channels is not None
                            else float("nan"))
    return out


# -- orthogonality pass: whole layers out of the store -------------------------------------------------------------


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


# -- the tables -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """When a layer counts as degenerated (any of three criteria, each also a boolean column):

    - ``sparse``: sparsity >= ``sparsity`` (default 0.5: at least half the filters carry nothing above 1 % of
      the layer's largest weight, so half the layer's capacity is unused);
    - ``low_diversity``: clean normalised variance entropy <= ``entropy_low`` (default 0.5: the non-sparse filters
      span few directions; torchconvquality's README shows trained ResNet-18 layers at 0.59-0.92 and the
      degenerated last layer at 0.22);
    - ``random_like``: clean normalised variance entropy >= ``entropy_high`` (default 0.98: the reference says
      values over 1 mean filters as random as at initialisation; i.i.d. Gaussian or uniform layers of 16 to
      65,536 filters measured 0.991 at the lowest, 1.002-1.13 on average, see docs/quality.md).

    The entropy criteria need at least ``min_filters`` non-sparse filters (default 16; the threshold function is
    negative for n <= 2 and steep for small n).
    """

    sparsity: float = 0.5
    entropy_low: float = 0.5
    entropy_high: float = 0.98
    min_filters: int = 16

    def __post_init__(self):
        if not 0.0 < self.sparsity <= 1.0:
            raise InputError(f"thresholds.sparsity must be in (0, 1]; got {self.sparsity!r}.")
        if not 0.0 <= self.entropy_low < 1.0:
            raise InputError(f"thresholds.entropy_low must be in [0, 1); got {self.entropy_low!r}.")
        if not self.entropy_high > self.entropy_low:
            raise InputError(f"thresholds.entropy_high must exceed entropy_low ({self.entropy_low}); "
                             f"got {self.entropy_high!r}.")
        if int(self.min_filters) != self.min_filters or self.min_filters < 2:
            raise InputError(f"thresholds.min_filters must be an integer >= 2; got {self.min_filters!r}.")


def _thresholds(value) -> Thresholds:
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(asdict(Thresholds()))
        if unknown:
            raise InputError(f"thresholds: unknown key(s) {sorted(unknown)}; use {sorted(asdict(Thresholds()))}.")
        return Thresholds(**value)
    raise InputError(f"thresholds must be a Thresholds, a dict or None; got {type(value).__name__}.")


def degeneration(table: pd.DataFrame, thresholds=None) -> pd.DataFrame:
    """The table with the criteria columns ``sparse``, ``low_diversity``, ``random_like``, ``degenerated`` and a
    ``degeneration`` score: the largest of sparsity / t.sparsity, (1 - clean norm) / (1 - t.entropy_low) and
    clean norm / t.entropy_high, so that each criterion's term reaches 1 at its threshold (for ranking)."""
    t = _thresholds(thresholds)
    out = table.copy()
    ent = out["variance_entropy_clean_norm"].to_numpy(np.float64)
    enough = out["n_nonsparse"].to_numpy() >= t.min_filters
    sp = out["sparsity"].to_numpy(np.float64)
    out["sparse"] = sp >= t.sparsity
    out["low_diversity"] = enough & (ent <= t.entropy_low)
    out["random_like"] = enough & (ent >= t.entropy_high)
    out["degenerated"] = out["sparse"] | out["low_diversity"] | out["random_like"]
    terms = np.stack([sp / t.sparsity, np.where(enough, (1.0 - ent) / (1.0 - t.entropy_low), np.nan),
                      np.where(enough, ent / t.entropy_high, np.nan)])
    with np.errstate(invalid="ignore"):
        score = np.where(np.all(np.isnan(terms), axis=0), np.nan,
                         np.nanmax(np.where(np.isnan(terms), -np.inf, terms), axis=0))
    out["degeneration"] = score
    return out


def _labels(m: xr.Dataset) -> dict:
    cols = {}
    for name in grouping_names(m):
        if name in m:
            labels = np.asarray(m[name].attrs["labels"], dtype=object)
            codes = m[name].values.astype(np.int64)
            cols[name] = pd.Categorical.from_codes(np.where(codes < len(labels), codes, -1),
                                                   categories=list(labels))
    return cols


def layer_quality(data, sparsity_eps: float = 0.01, *, thresholds=None, orthogonality: bool = True) -> pd.DataFrame:
    """One row per record (model x conv depth, or one layer) with every metric and the degeneration flags.

    ``data`` is a Dataset or a :class:`~filtershift.stats.RecordStats` (pass the one of a shift analysis to
    share its passes 1 and 2). Columns: record, model_id, conv_depth, conv_depth_norm, depth (decile), layer,
    in/out channels, groups, the grouping labels (task, visual_category, ...), n, n_nonsparse, max_abs, the
    :data:`METRICS`, and the columns of :func:`degeneration`. ``orthogonality=False`` skips its pass (NaN).

    Parameters
    ----------
    data : xarray.Dataset or RecordStats
        A filtershift Dataset or its per-record statistics.
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|; in (0, 1).
    thresholds : Thresholds or dict, optional
        Degeneration criteria (:class:`~filtershift.stats.quality.Thresholds` or a dict of its fields); default
        ``Thresholds()``.
    orthogonality : bool, default True
        Compute the orthogonality metric (one more pass over whole layers); False leaves it NaN.

    Returns
    -------
    pandas.DataFrame
        One row per record; columns ``record``, ``model_id``, ``conv_depth``, ``conv_depth_norm``, ``depth``,
        ``layer``, ``in_channels``, ``out_channels``, ``groups``, the grouping labels, ``max_abs``, ``n``,
        ``n_nonsparse``, the metrics, ``sparse``, ``low_diversity``, ``random_like``, ``degenerated`` and
        ``degeneration``; ``attrs`` hold ``sparsity_eps`` and ``thresholds``.

    Raises
    ------
    filtershift.errors.InputError
        If ``sparsity_eps`` is not in (0, 1), ``thresholds`` is invalid, or ``data`` is not a filtershift Dataset
        or RecordStats.
    """
    from filtershift.store.dataset import records as records_table

    eps = _check_eps(sparsity_eps)
    t = _thresholds(thresholds)
    stats = as_stats(data)
    m = stats.moments()
    s = stats.sparsity(eps)
    rec_ids = m["record"].values
    res = finalize(m["n"].values, m["raw_sum"].values, m["raw_comoment"].values, m["raw_l1_sum"].values,
                   m["raw_l2_sum"].values, s["sparse_count"].values, s["nonsparse_n"].values,
                   s["nonsparse_comoment"].values)
    recs = records_table(stats.ds).set_index("record").reindex(rec_ids)
    table = pd.DataFrame({
        "record": rec_ids.astype(np.int64),
        "model_id": m["model_id"].values.astype(np.int64),
        "conv_depth": m["conv_depth"].values.astype(np.int64),
        "conv_depth_norm": m["conv_depth_norm"].values.astype(np.float64),
        "depth": pd.Categorical.from_codes(depth_codes(m["conv_depth_norm"].values),
                                           categories=DEPTH_LABELS),
        "layer": recs["layer"].fillna("").astype(str).to_numpy(),
        "in_channels": recs["in_channels"].astype("Int64").array,
        "out_channels": recs["out_channels"].astype("Int64").array,
        "groups": recs["groups"].astype("Int64").array,
    })
    for name, values in _labels(m).items():
        table[name] = values
    table["max_abs"] = m["raw_absmax"].values.astype(np.float64)
    for k in ("n", "n_nonsparse"):
        table[k] = res[k]
    for k in METRICS:
        table[k] = np.nan if k == "orthogonality" else res[k]
    if orthogonality:
        table["orthogonality"] = orthogonality_values(stats, rec_ids)
    table = degeneration(table, t)
    table.attrs.update({"sparsity_eps": eps, "thresholds": asdict(t)})
    return table


def orthogonality_values(data, records: np.ndarray) -> np.ndarray:
    """:func:`orthogonality` of ``records`` as an array in their order."""
    return orthogonality(data, records).reindex(records).to_numpy(np.float64)


def _weighted_mean(values: pd.Series, weights: pd.Series) -> float:
    v = values.to_numpy(np.float64)
    w = weights.to_numpy(np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else float("nan")


_META = ("record", "conv_depth", "conv_depth_norm", "depth", "layer", "in_channels", "out_channels", "groups")


def model_quality(data, sparsity_eps: float = 0.01, *, thresholds=None, orthogonality: bool = True) -> pd.DataFrame:
    """One row per model: its layers' metrics averaged with their filter counts as weights.

    Each row also holds the number of layers and filters, and the share of degenerated layers
    (``degenerated_share``) and of filters in them (``degenerated_filter_share``). ``data`` is a table from
    :func:`layer_quality` or anything :func:`layer_quality` accepts (then computed with the other arguments).

    Parameters
    ----------
    data : pandas.DataFrame, xarray.Dataset or RecordStats
        A :func:`layer_quality` table, or the input of :func:`layer_quality`.
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|; in (0, 1).
        Used only when the layer table is computed here.
    thresholds : Thresholds or dict, optional
        Degeneration criteria (:class:`~filtershift.stats.quality.Thresholds` or a dict of its fields); default
        ``Thresholds()``.
        Used only when the layer table is computed here.
    orthogonality : bool, default True
        Compute the orthogonality metric (one more pass over whole layers); False leaves it NaN.
        Used only when the layer table is computed here.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``model_id``, the grouping labels, ``n_layers``, ``n_filters``, the filter-weighted
        mean of each metric and of ``degeneration``, ``n_degenerated``, ``degenerated_share``,
        ``degenerated_filter_share``; ``attrs`` copied from the layer table.

    Raises
    ------
    filtershift.errors.InputError
        If a given table lacks the columns of a :func:`layer_quality` table, or as :func:`layer_quality`.
    """
    table = data if isinstance(data, pd.DataFrame) else layer_quality(
        data, sparsity_eps, thresholds=thresholds, orthogonality=orthogonality)
    need = {"model_id", "n", "degenerated", *METRICS}
    missing = need - set(table.columns)
    if missing:
        raise InputError(f"model_quality: the table lacks column(s) {sorted(missing)}; pass a layer_quality table.")
    labels = [c for c in table.columns if isinstance(table[c].dtype, pd.CategoricalDtype) and c not in _META]
    rows = []
    for model_id, g in table.groupby("model_id", sort=True):
        row = {"model_id": model_id}
        for c in labels:
            row[c] = g[c].iloc[0]
        row["n_layers"] = len(g)
        row["n_filters"] = int(g["n"].sum())
        for k in METRICS + ("degeneration",):
            if k in g:
                row[k] = _weighted_mean(g[k], g["n"])
        row["n_degenerated"] = int(g["degenerated"].sum())
        row["degenerated_share"] = float(g["degenerated"].mean())
        row["degenerated_filter_share"] = float(g.loc[g["degenerated"], "n"].sum() / max(row["n_filters"], 1))
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in labels:
        out[c] = pd.Categorical(out[c], categories=table[c].cat.categories)
    out.attrs.update(table.attrs)
    return out


def most_degenerated(table: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """The ``k`` most degenerated rows of a layer or model table.

    Layers are ranked by their ``degeneration`` score, models by ``degenerated_share``, then
    ``degenerated_filter_share``, then their mean score.

    Parameters
    ----------
    table : pandas.DataFrame
        A table from :func:`layer_quality` or :func:`model_quality`.
    k : int, default 10
        Number of rows returned, a positive integer.

    Returns
    -------
    pandas.DataFrame
        The ``k`` first rows of ``table`` in that order (NaN scores last), with all its columns.

    Raises
    ------
    filtershift.errors.InputError
        If ``k`` is not a positive integer.
    """
    try:
        k = int(k)
    except (TypeError, ValueError):
        k = -1
    if k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}.")
    keys = ["degenerated_share", "degenerated_filter_share", "degeneration"]
    if "degenerated_share" not in table:
        keys = ["degeneration"]
    return table.sort_values(keys, ascending=False, na_position="last", kind="stable").head(k)


def quality_by(table: pd.DataFrame, by, metrics=METRICS, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95),
               bins: int = 20) -> xr.Dataset:
    """Per group of a layer (or model) table: counts, metric means, distributions and the degenerated share.

    For each group: counts, filter-weighted mean of each metric, the distribution over layers (quantiles and a
    histogram on each metric's range over the whole table) and the degenerated share. ``by``: a column of the
    table ('task', 'visual_category', 'depth', 'model_id', 'conv_depth', ...; the original meta column names such
    as 'Visual Category' also work) or a list of them.

    Parameters
    ----------
    table : pandas.DataFrame
        A table from :func:`layer_quality` or :func:`model_quality`.
    by : str or list of str
        Column or columns to group by.
    metrics : sequence of str, default METRICS
        Metric columns summarised (those absent from the table are left out).
    quantiles : sequence of float, default (0.05, 0.25, 0.5, 0.75, 0.95)
        Quantile levels computed over each group's rows.
    bins : int, default 20
        Number of histogram bins per metric, a positive integer.

    Returns
    -------
    xarray.Dataset
        Dims (group, metric, quantile, bin, bin_edge): ``n_rows``, ``n_filters``, ``degenerated_share`` (group),
        ``mean`` (group, metric), ``quantiles`` (group, metric, quantile), ``hist`` (group, metric, bin); coords
        ``group`` (labels joined by " / "), ``metric``, ``quantile``, ``bin_edges`` (metric, bin_edge),
        ``metric_units`` (metric) and one coordinate per ``by`` column along ``group``.

    Raises
    ------
    filtershift.errors.InputError
        If a ``by`` column is missing or ``bins`` is not a positive integer.
    """
    from filtershift.store.format import snake_case

    keys = [by] if isinstance(by, str) else list(by)
    cols = []
    for key in keys:
        col = key if key in table.columns else snake_case(key)
        if col not in table.columns:
            choices = [c for c in table.columns if isinstance(table[c].dtype, pd.CategoricalDtype)]
            raise InputError(f"quality_by: no column {key!r}; group by one of {choices + ['model_id', 'conv_depth']}.")
        cols.append(col)
    metrics = [m for m in metrics if m in table.columns]
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise InputError(f"bins must be a positive integer; got {bins!r}.")
    weight = table["n_filters"] if "n_filters" in table else table["n"]
    groups = list(table.assign(_w=weight).groupby(cols, observed=True, sort=True))
    gkeys = [k if isinstance(k, tuple) else (k,) for k, _ in groups]
    labels = [" / ".join(str(v) for v in k) for k in gkeys]
    q = np.asarray(quantiles, np.float64)
    edges = np.zeros((len(metrics), bins + 1))
    for i, name in enumerate(metrics):
        v = table[name].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        edges[i] = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    g_n = len(labels)
    mean = np.full((g_n, len(metrics)), np.nan)
    quant = np.full((g_n, len(metrics), len(q)), np.nan)
    hist = np.zeros((g_n, len(metrics), bins), np.int64)
    n_rows, n_filters, degen = np.zeros(g_n, np.int64), np.zeros(g_n, np.int64), np.full(g_n, np.nan)
    for gi, (_, g) in enumerate(groups):
        n_rows[gi], n_filters[gi] = len(g), int(g["_w"].sum())
        if "degenerated" in g:
            degen[gi] = float(g["degenerated"].mean())
        for i, name in enumerate(metrics):
            mean[gi, i] = _weighted_mean(g[name], g["_w"])
            v = g[name].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                quant[gi, i] = np.quantile(v, q)
                hist[gi, i] = np.histogram(v, bins=edges[i])[0]
    out = xr.Dataset(
        {"n_rows": ("group", n_rows), "n_filters": ("group", n_filters), "degenerated_share": ("group", degen),
         "mean": (("group", "metric"), mean), "quantiles": (("group", "metric", "quantile"), quant),
         "hist": (("group", "metric", "bin"), hist)},
        coords={"group": labels, "metric": list(metrics), "quantile": q,
                "bin_edges": (("metric", "bin_edge"), edges)})
    for j, col in enumerate(cols):
        out = out.assign_coords({col: ("group", [k[j] for k in gkeys])})
    out.attrs.update({"by": cols, "mean": "weighted by filter count",
                      "quantiles": "over the rows (layers or models) of each group, NaN values left out",
                      "long_name": "quality per group", "units": "1",
                      "description": f"quality metrics of the {'layers' if 'n' in table else 'models'} per "
                                     f"{' x '.join(cols)} group"})
    table_attrs = {
        "n_rows": ("rows", "1", "layers (or models) in the group"),
        "n_filters": ("filters", "1", "filters in the group"),
        "degenerated_share": ("degenerated share", "1", "share of the group's rows flagged degenerated"),
        "mean": ("mean", "see metric_units", "filter-weighted mean of each metric"),
        "quantiles": ("quantiles", "see metric_units", "quantiles of each metric over the group's rows"),
        "hist": ("rows per bin", "1", "histogram of each metric over the group's rows"),
    }
    for name, (long_name, units, description) in table_attrs.items():
        out[name].attrs.update({"long_name": long_name, "units": units, "description": description})
    units = ["weight units" if "norm" in m and "entropy" not in m else "1" for m in metrics]
    return out.assign_coords(metric_units=("metric", units))
