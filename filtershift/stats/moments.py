"""Per-record moments: pass 1 (scaled and raw co-moments, norms) and pass 2 (coefficient range, sparsity).

Each pass is declared flox-style as ``chunk`` / ``combine`` / ``finalize`` on partials keyed by record (see
:mod:`filtershift.stats.reduction`). The chunk steps run fused numba kernels (``nogil``: the threaded scheduler uses
every core); :func:`moments_reference` and :func:`range_sparsity_reference` are the plain numpy definitions they must
equal.

Conventions (float64 throughout): a *scaled* filter is the 9-vector divided by its largest absolute value (an
all-zero filter stays zero); a *co-moment* is the centred sum of outer products ``sum (x - mean)(x - mean)^T``
over a record's filters; a *sparse* filter has every ``|w| < eps * max|w| of its record`` (all filters of an
all-zero record are sparse).
"""

from __future__ import annotations

import numba
import numpy as np

from filtershift.stats import reduction

#: Weights per filter (a 3x3 kernel, row-major); the one definition.
K = 9

# -- pass 1 ---------------------------------------------------------------------------------------------------------


#: Rows per block inside the kernels: the block is transposed to (feature, row) so the inner loops vectorise.
BLOCK = 512


@numba.njit(nogil=True, cache=True, inline="always")
def load_block(w, a, n, wt):
    """Rows ``a:a+n`` of ``w`` into ``wt[:9, :n]`` (float64, transposed); ``wt[9]`` = 1/max|row| (0 if zero),
    ``wt[10]`` = max|row| (NaN entries ignored). Feature-major loops, so all but the transposing copy vectorise;
    the copy indexes a slice of the block, not ``w[a + i, k]`` (faster: BENCHMARKS.md, "Figures from the code")."""
    blk = w[a:a + n]
    for k in range(K):
        for i in range(n):
            wt[k, i] = np.float64(blk[i, k])
    for i in range(n):
        wt[10, i] = 0.0
    for k in range(K):
        for i in range(n):
            v = abs(wt[k, i])
            wt[10, i] = v if v > wt[10, i] else wt[10, i]
    for i in range(n):
        m = wt[10, i]
        wt[9, i] = 1.0 / m if m > 0.0 else 0.0


@numba.njit(nogil=True, cache=True, inline="always")
def _lanesum(x, n):
    """sum(x[:n]) in four interleaved partial sums: as fast as a vectorised sum. In strict kernels the order is
    exactly this one; inlined into a reassociating kernel the compiler may reorder it, the same way every time."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    n4 = n - n % 4
    for i in range(0, n4, 4):
        a0 += x[i]
        a1 += x[i + 1]
        a2 += x[i + 2]
        a3 += x[i + 3]
    for i in range(n4, n):
        a0 += x[i]
    return (a0 + a1) + (a2 + a3)


@numba.njit(nogil=True, cache=True)
def coef_block(wt, n, mc, comps, c):
    """Coefficients of a loaded block: ``c[j, i] = inv_i * (w_i . comps_j) - comps_j . mean`` (``mc``), which
    equals (scaled filter - mean) . component. Passes 2 and 3 share it, so their values agree bit for bit."""
    for j in range(comps.shape[0]):
        c0, c1, c2, c3, c4 = comps[j, 0], comps[j, 1], comps[j, 2], comps[j, 3], comps[j, 4]
        c5, c6, c7, c8 = comps[j, 5], comps[j, 6], comps[j, 7], comps[j, 8]
        m = mc[j]
        for i in range(n):
            acc = 0.0 + wt[0, i] * c0
            acc += wt[1, i] * c1
            acc += wt[2, i] * c2
            acc += wt[3, i] * c3
            acc += wt[4, i] * c4
            acc += wt[5, i] * c5
            acc += wt[6, i] * c6
            acc += wt[7, i] * c7
            acc += wt[8, i] * c8
            c[j, i] = acc * wt[9, i] - m


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"}, inline="always")
def _block_comoment(d, n, out):
    """out[p, q] = sum_i d[p, i] d[q, i] (upper triangle, p <= q) for a (K, >=n) block.

    Inlined (numba IR) into its callers, :func:`moments_kernel` and :func:`sparsity_kernel`, which allow
    reassociation so that this loop vectorises. Inlining keeps every reassociated sum inside one self-contained
    kernel: compiled on its own and linked, the loop summed in an order that depended on what the process, or
    the one that filled numba's cache, had compiled first (tests/test_determinism.py)."""
    for p in range(K):
        for q in range(p, K):
            acc = 0.0
            for i in range(n):
                acc += d[p, i] * d[q, i]
            out[p, q] = acc


@numba.njit(nogil=True, cache=True, inline="always")
def _chan(n_a, mean_a, com_a, n_b, mean_b, com_b):
    """Merge block (b) into accumulator (a) in place: Chan et al.'s pairwise update (upper triangles)."""
    tot = n_a + n_b
    f = n_a * n_b / tot
    for p in range(K):
        dp = mean_b[p] - mean_a[p]
        for q in range(p, K):
            com_a[p, q] += com_b[p, q] + dp * (mean_b[q] - mean_a[q]) * f
    for p in range(K):
        mean_a[p] += (mean_b[p] - mean_a[p]) * n_b / tot


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def moments_kernel(w, starts, n, s_sum, s_com, r_sum, r_com, absmax, fmin, l1, l2):
    """Fill per-run outputs: count, sums and co-moments of scaled and raw filters, max |w|, the smallest max |w|
    of a filter (``fmin``: pass 2 skips the sparsity work of runs it proves free of sparse filters), sums of
    l1/l2 norms.

    Each block of rows is centred on its own mean (two passes in cache), then merged into the run with Chan's
    update: accurate whatever the offset of the data. Reassociation is allowed here (the co-moment loop
    vectorises); every helper it calls is inlined, so the compiled kernel and its sums never depend on what was
    compiled before it.
    """
    wt = np.empty((11, BLOCK))
    ds = np.empty((K, BLOCK))
    dr = np.empty((K, BLOCK))
    norms = np.empty((2, BLOCK))
    bms = np.empty(K)
    bmr = np.empty(K)
    bcs = np.zeros((K, K))
    bcr = np.zeros((K, K))
    ms = np.empty(K)
    mr = np.empty(K)
    for r in range(starts.size - 1):
        ms[:] = 0.0
        mr[:] = 0.0
        cnt = 0.0
        amax = 0.0
        fm = np.inf
        sl1 = 0.0
        sl2 = 0.0
        for a in range(starts[r], starts[r + 1], BLOCK):
            nb = min(BLOCK, starts[r + 1] - a)
            load_block(w, a, nb, wt)
            for i in range(nb):
                amax = wt[10, i] if wt[10, i] > amax else amax
                fm = wt[10, i] if wt[10, i] < fm else fm
                norms[0, i] = 0.0
                norms[1, i] = 0.0
            for k in range(K):
                for i in range(nb):
                    norms[0, i] += abs(wt[k, i])
                    norms[1, i] += wt[k, i] * wt[k, i]
            for i in range(nb):
                norms[1, i] = np.sqrt(norms[1, i])
            sl1 += _lanesum(norms[0], nb)
            sl2 += _lanesum(norms[1], nb)
            for k in range(K):
                for i in range(nb):
                    ds[k, i] = wt[k, i] * wt[9, i]
                    dr[k, i] = wt[k, i]
                bms[k] = _lanesum(ds[k], nb) / nb
                bmr[k] = _lanesum(dr[k], nb) / nb
                for i in range(nb):
                    ds[k, i] -= bms[k]
                    dr[k, i] -= bmr[k]
            _block_comoment(ds, nb, bcs)
            _block_comoment(dr, nb, bcr)
            _chan(cnt, ms, s_com[r], float(nb), bms, bcs)
            _chan(cnt, mr, r_com[r], float(nb), bmr, bcr)
            cnt += nb
        n[r] = starts[r + 1] - starts[r]
        absmax[r] = amax
        fmin[r] = fm
        l1[r] = sl1
        l2[r] = sl2
        for k in range(K):
            s_sum[r, k] = ms[k] * cnt
            r_sum[r, k] = mr[k] * cnt
        for p in range(K):
            for q in range(p + 1, K):
                s_com[r, q, p] = s_com[r, p, q]
                r_com[r, q, p] = r_com[r, p, q]


def scale(w: np.ndarray) -> np.ndarray:
    """Filters divided by their largest absolute value, in float64; all-zero filters stay zero."""
    x = np.asarray(w, dtype=np.float64)
    m = np.abs(x).max(axis=1, keepdims=True)
    return np.divide(x, m, out=np.zeros_like(x), where=m > 0)


def comoment(x: np.ndarray) -> np.ndarray:
    """Plain numpy co-moment of the rows of ``x``: sum (x - mean)(x - mean)^T (zeros for no rows)."""
    d = x - x.mean(axis=0) if len(x) else x
    return d.T @ d


def moments_reference(w: np.ndarray, starts: np.ndarray) -> dict:
    """Plain numpy definition of :func:`moments_kernel` (for tests)."""
    out = {f: [] for f in ("n", "scaled_sum", "scaled_comoment", "raw_sum", "raw_comoment", "raw_absmax",
                           "filter_absmax_min", "raw_l1_sum", "raw_l2_sum")}
    for a, b in zip(starts[:-1], starts[1:]):
        raw = np.asarray(w[a:b], dtype=np.float64)
        sc = scale(raw)
        out["n"].append(b - a)
        out["scaled_sum"].append(sc.sum(0))
        out["scaled_comoment"].append(comoment(sc))
        out["raw_sum"].append(raw.sum(0))
        out["raw_comoment"].append(comoment(raw))
        out["raw_absmax"].append(np.abs(raw).max() if len(raw) else 0.0)
        out["filter_absmax_min"].append(np.abs(raw).max(1).min() if len(raw) else np.inf)
        out["raw_l1_sum"].append(np.abs(raw).sum())
        out["raw_l2_sum"].append(np.sqrt((raw ** 2).sum(1)).sum())
    return {k: np.asarray(v) for k, v in out.items()}


MOMENT_FIELDS = {
    "n": "sum",
    "scaled_sum": ("chan_sum", "n"),
    "scaled_comoment": ("chan", "n", "scaled_sum"),
    "raw_sum": ("chan_sum", "n"),
    "raw_comoment": ("chan", "n", "raw_sum"),
    "raw_absmax": "max",
    "filter_absmax_min": "min",
    "raw_l1_sum": "sum",
    "raw_l2_sum": "sum",
}
META_FIELDS = ("model_id", "conv_depth", "conv_depth_norm")


def moments_chunk(weights, record, *coords, names=()) -> dict:
    """Pass-1 partial of one block: the moments of each record present, plus its meta values and group codes."""
    perm, ids, starts = reduction.runs(record)
    w = weights if perm is None else weights[perm]
    r = len(ids)
    out = {"record": ids, "n": np.zeros(r, np.int64), "scaled_sum": np.zeros((r, K)),
           "scaled_comoment": np.zeros((r, K, K)), "raw_sum": np.zeros((r, K)),
           "raw_comoment": np.zeros((r, K, K)), "raw_absmax": np.zeros(r), "filter_absmax_min": np.zeros(r),
           "raw_l1_sum": np.zeros(r), "raw_l2_sum": np.zeros(r)}
    moments_kernel(np.ascontiguousarray(w), starts, out["n"], out["scaled_sum"], out["scaled_comoment"],
                   out["raw_sum"], out["raw_comoment"], out["raw_absmax"], out["filter_absmax_min"],
                   out["raw_l1_sum"], out["raw_l2_sum"])
    first = starts[:-1]
    for name, values in zip(names, coords):
        v = values if perm is None else values[perm]
        out[name] = np.asarray(v)[first]
    return out


def moments_combine(*parts: dict) -> dict:
    how = dict(MOMENT_FIELDS)
    how.update({k: "first" for k in parts[0] if k not in how and k != "record"})
    return reduction.merge(parts, how)


#: Pass 1. The cache labels the merged partial (meta, group codes) as the moments Dataset.
MOMENTS = reduction.Statistic("moments", chunk=moments_chunk, combine=moments_combine, finalize=reduction.unchanged)


# -- pass 2 ---------------------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def mean_projection(mean, comps):
    """comps @ mean, the constant term of :func:`coef_block`."""
    mc = np.zeros(comps.shape[0])
    for j in range(comps.shape[0]):
        for k in range(K):
            mc[j] += comps[j, k] * mean[k]
    return mc


@numba.njit(nogil=True, cache=True)
def range_kernel(w, starts, mean, comps, cmin, cmax):
    """Per run: coefficient min/max per component. Strict arithmetic: its coefficients are pass 3's, bit for
    bit (both use :func:`coef_block`), so the range holds every value pass 3 bins."""
    nc = comps.shape[0]
    mc = mean_projection(mean, comps)
    wt = np.empty((11, BLOCK))
    c = np.empty((nc, BLOCK))
    lo = np.empty((nc, BLOCK))
    hi = np.empty((nc, BLOCK))
    for r in range(starts.size - 1):
        lo[:] = np.inf
        hi[:] = -np.inf
        for a in range(starts[r], starts[r + 1], BLOCK):
            nb = min(BLOCK, starts[r + 1] - a)
            load_block(w, a, nb, wt)
            coef_block(wt, nb, mc, comps, c)
            for j in range(nc):
                for i in range(nb):
                    x = c[j, i]
                    lo[j, i] = x if x < lo[j, i] else lo[j, i]
                    hi[j, i] = x if x > hi[j, i] else hi[j, i]
        span = min(BLOCK, starts[r + 1] - starts[r])
        for j in range(nc):
            cmin[r, j] = np.min(lo[j, :span]) if span > 0 else np.inf
            cmax[r, j] = np.max(hi[j, :span]) if span > 0 else -np.inf


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def sparsity_kernel(w, starts, shift, thresh, all_sparse, clean, sparse, ns_n, ns_sum, ns_com):
    """Per run not marked ``clean``: count of sparse filters; shifted sum and second moment of the non-sparse raw
    filters (``shift`` is the record's raw mean, so the one-pass sums stay accurate). Clean runs (no sparse
    filter, known from pass 1) are skipped: see :func:`range_sparsity_finalize`. Reassociation is allowed (the co-moment
    loop vectorises); its helpers are inlined, so the compiled kernel does not depend on what was compiled
    before it."""
    wt = np.empty((11, BLOCK))
    d = np.empty((K, BLOCK))
    bc = np.zeros((K, K))
    for r in range(starts.size - 1):
        if clean[r]:
            continue
        t = thresh[r]
        for a in range(starts[r], starts[r + 1], BLOCK):
            nb = min(BLOCK, starts[r + 1] - a)
            load_block(w, a, nb, wt)
            n_sparse = 0
            if all_sparse[r]:
                n_sparse = nb
            else:
                for i in range(nb):
                    n_sparse += wt[10, i] < t
            m = nb - n_sparse
            if n_sparse == 0:
                for k in range(K):
                    for i in range(nb):
                        d[k, i] = wt[k, i] - shift[r, k]
            elif m > 0:
                m = 0
                for i in range(nb):
                    if wt[10, i] < t:
                        continue
                    for k in range(K):
                        d[k, m] = wt[k, i] - shift[r, k]
                    m += 1
            sparse[r] += n_sparse
            ns_n[r] += m
            for k in range(K):
                ns_sum[r, k] += _lanesum(d[k], m)
            _block_comoment(d, m, bc)
            for p in range(K):
                for q in range(p, K):
                    ns_com[r, p, q] += bc[p, q]
        for p in range(K):
            for q in range(p + 1, K):
                ns_com[r, q, p] = ns_com[r, p, q]


def coefficients(w: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Plain numpy coefficients: (scaled filter - mean) projected on the components."""
    return (scale(w) - mean) @ np.asarray(components).T


def range_sparsity_reference(w, starts, absmax, mean, components, eps) -> dict:
    """Plain numpy definition of pass 2 (:func:`range_kernel`, :func:`sparsity_kernel`) after finalisation (for
    tests)."""
    out = {f: [] for f in ("coef_min", "coef_max", "sparse_count", "nonsparse_sum", "nonsparse_comoment")}
    for r, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        raw = np.asarray(w[a:b], dtype=np.float64)
        c = coefficients(raw, mean, components)
        out["coef_min"].append(c.min(0) if len(c) else np.full(len(mean), np.inf))
        out["coef_max"].append(c.max(0) if len(c) else np.full(len(mean), -np.inf))
        threshold = np.float64(np.float32(eps * absmax[r]))
        sp = np.all(np.abs(raw) < threshold, axis=1) if absmax[r] > 0 else np.ones(len(raw), bool)
        keep = raw[~sp]
        out["sparse_count"].append(int(sp.sum()))
        out["nonsparse_sum"].append(keep.sum(0))
        out["nonsparse_comoment"].append(comoment(keep))
    return {k: np.asarray(v) for k, v in out.items()}


RANGE_SPARSITY_FIELDS = {
    "coef_min": "min",
    "coef_max": "max",
    "sparse_count": "sum",
    "nonsparse_n": "sum",
    "nonsparse_sum": ("chan_sum", "nonsparse_n"),
    "nonsparse_comoment": ("chan", "nonsparse_n", "nonsparse_sum"),
}


def range_sparsity_chunk(weights, record, params) -> dict:
    """Pass-2 partial of one block; ``params`` holds the basis and the per-record results of pass 1, among them
    ``clean``: records without a sparse filter, whose non-sparse statistics :func:`range_sparsity_finalize` takes from
    pass 1 (their partial rows hold the range only)."""
    perm, ids, starts = reduction.runs(record)
    w = np.ascontiguousarray(weights if perm is None else weights[perm])
    pos = np.searchsorted(params["record"], ids)
    r, nc = len(ids), params["components"].shape[0]
    absmax = params["raw_absmax"][pos]
    shift = params["raw_mean"][pos]
    out = {"record": ids, "coef_min": np.empty((r, nc)), "coef_max": np.empty((r, nc)),
           "sparse_count": np.zeros(r, np.int64), "nonsparse_n": np.zeros(r, np.int64),
           "nonsparse_sum": np.zeros((r, K)), "nonsparse_comoment": np.zeros((r, K, K))}
    range_kernel(w, starts, params["mean"], params["components"], out["coef_min"], out["coef_max"])
    clean = params["clean"][pos]
    if not clean.all():
        sparsity_kernel(w, starts, shift, sparsity_threshold(absmax, params["eps"]), absmax <= 0, clean,
                        out["sparse_count"], out["nonsparse_n"], out["nonsparse_sum"], out["nonsparse_comoment"])
    # shifted one-pass sums -> sum and centred co-moment
    cnt = out["nonsparse_n"].astype(np.float64)
    s1 = out["nonsparse_sum"]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(cnt[:, None, None] > 0, s1[:, :, None] * s1[:, None, :] / cnt[:, None, None], 0.0)
    out["nonsparse_comoment"] = out["nonsparse_comoment"] - corr
    out["nonsparse_sum"] = s1 + cnt[:, None] * shift
    return out


def range_sparsity_combine(*parts: dict) -> dict:
    return reduction.merge(parts, RANGE_SPARSITY_FIELDS)


def clean_records(absmax, filter_absmax_min, eps: float) -> np.ndarray:
    """Records that hold no sparse filter for ``eps``, from pass 1: the smallest filter max|w| reaches the
    threshold (exactly the kernel's test), and the record is not all-zero."""
    absmax = np.asarray(absmax, np.float64)
    return (absmax > 0) & ~(np.asarray(filter_absmax_min, np.float64) < sparsity_threshold(absmax, eps))


def sparsity_threshold(absmax, eps: float) -> np.ndarray:
    """eps * max|w| of the record, rounded to float32 as torchconvquality compares it (on float32 tensors)."""
    return (eps * np.asarray(absmax, np.float64)).astype(np.float32).astype(np.float64)


def range_sparsity_finalize(part: dict, clean, n, raw_sum, raw_comoment) -> dict:
    """Pass-2 result on the records of pass 1: clean records (every filter non-sparse) take their non-sparse
    count, sum and co-moment from pass 1's raw statistics."""
    out = dict(part)
    out["sparse_count"] = np.where(clean, 0, part["sparse_count"])
    out["nonsparse_n"] = np.where(clean, n, part["nonsparse_n"])
    out["nonsparse_sum"] = np.where(clean[:, None], raw_sum, part["nonsparse_sum"])
    out["nonsparse_comoment"] = np.where(clean[:, None, None], raw_comoment, part["nonsparse_comoment"])
    return out


#: Pass 2. Records absent from every block keep an empty range (min +inf, max -inf).
RANGE_SPARSITY = reduction.Statistic("range-sparsity", chunk=range_sparsity_chunk, combine=range_sparsity_combine,
                                     finalize=range_sparsity_finalize,
                                     fill={"coef_min": np.inf, "coef_max": -np.inf})
