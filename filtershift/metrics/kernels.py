"""Pairwise JS and W1 over the upper triangle of group pairs, in numba (imported only when a matrix is computed).

A drift matrix of the per-model grouping holds 647 x 647 pairs x 9 components x 70 bins: numpy's blocked broadcast
computed both triangles and several temporaries per element (about 4 s for JS). These kernels compute each unordered
pair once, in one loop over the bins without temporaries, and split the rows between threads (the kernels release
the GIL). Both are tested pair by pair against scipy's ``jensenshannon`` and ``wasserstein_distance``
(``tests/test_metrics_kernels.py``). NaN histograms (empty groups) give NaN.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from dask.system import cpu_count


@numba.njit(nogil=True, cache=True)
def js_rows(p, neg_entropy, lo, hi, out):
    """JS of rows ``lo:hi`` against every row at or after them: ``p`` (R, group, component, bin), ``neg_entropy``
    (R, group, component) = sum p log p; writes ``out[r, i, j, c]`` and its mirror ``out[r, j, i, c]``.
    JS = (sum p log p + sum q log q) / 2 - sum m log m with m = (p + q) / 2, clipped at 0 (rounding leaves -1e-17);
    0 log 0 = 0."""
    n_rep, g, k, nb = p.shape
    for r in range(n_rep):
        for i in range(lo, hi):
            for j in range(i, g):
                for c in range(k):
                    s = 0.0
                    for t in range(nb):
                        m = 0.5 * (p[r, i, c, t] + p[r, j, c, t])
                        if m != 0.0:
                            s += m * np.log(m)
                    v = 0.5 * (neg_entropy[r, i, c] + neg_entropy[r, j, c]) - s
                    if v < 0.0:
                        v = 0.0
                    out[r, i, j, c] = v
                    out[r, j, i, c] = v


@numba.njit(nogil=True, cache=True)
def w1_rows(cdf, widths, lo, hi, out):
    """W1 of rows ``lo:hi`` against every row at or after them: ``cdf`` (R, group, component, bin) the cumulative
    masses, ``widths`` (bin); sum_t |F_p(t) - F_q(t)| * width_t, written to ``out[r, i, j, c]`` and its mirror."""
    n_rep, g, k, nb = cdf.shape
    for r in range(n_rep):
        for i in range(lo, hi):
            for j in range(i, g):
                for c in range(k):
                    s = 0.0
                    for t in range(nb):
                        s += abs(cdf[r, i, c, t] - cdf[r, j, c, t]) * widths[t]
                    out[r, i, j, c] = s
                    out[r, j, i, c] = s


def row_splits(g: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous row ranges of a g x g upper triangle holding about equal numbers of pairs (row i holds
    g - i of them), so that the threads finish together."""
    done = np.cumsum(np.arange(g, 0, -1))
    cuts = np.searchsorted(done, done[-1] * np.arange(1, parts) / parts) + 1 if g else []
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < g}), g]
    return list(zip(bounds[:-1], bounds[1:]))


def _run(kernel, first, second, g: int, out: np.ndarray) -> None:
    """``kernel(first, second, lo, hi, out)`` over row ranges, one per core this process may use (dask's count,
    as the local cluster's: CPU affinity and cgroup quotas included; one call when g is small)."""
    threads = min(cpu_count(), 8) if g >= 64 else 1
    ranges = row_splits(g, threads)
    if len(ranges) == 1:
        kernel(first, second, 0, g, out)
        return
    with ThreadPoolExecutor(len(ranges), thread_name_prefix="filtershift-pairwise") as pool:
        for f in [pool.submit(kernel, first, second, lo, hi, out) for lo, hi in ranges]:
            f.result()


def _flat(p: np.ndarray) -> np.ndarray:
    """``p`` as a writable C-contiguous float64 (R, group, component, bin) array (the one layout compiled)."""
    p = np.asarray(p, np.float64)
    return np.require(p.reshape((-1,) + p.shape[-3:]), np.float64, ["C", "W"])


def js(p: np.ndarray) -> np.ndarray:
    """(..., group, group, component) Jensen-Shannon divergences of ``p`` (..., group, component, bin)."""
    flat = _flat(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        neg_entropy = np.where(flat != 0, flat * np.log(np.where(flat != 0, flat, 1.0)), 0.0).sum(-1)
    out = np.empty(flat.shape[:2] + flat.shape[1:3])
    _run(js_rows, flat, np.ascontiguousarray(neg_entropy), flat.shape[1], out)
    return out.reshape(p.shape[:-3] + out.shape[1:])


def w1(p: np.ndarray, widths) -> np.ndarray:
    """(..., group, group, component) Wasserstein-1 distances of ``p`` (..., group, component, bin), masses at
    the bin centres."""
    flat = _flat(p)
    cdf = np.cumsum(flat, axis=-1)
    out = np.empty(flat.shape[:2] + flat.shape[1:3])
    _run(w1_rows, cdf, np.require(np.asarray(widths, np.float64), np.float64, ["C", "W"]), flat.shape[1], out)
    return out.reshape(p.shape[:-3] + out.shape[1:])


def signatures() -> list:
    """(kernel, signature) of both kernels as :func:`js` and :func:`w1` call them, for ahead-of-time compilation."""
    f1 = numba.types.Array(numba.types.float64, 1, "C")
    f3 = numba.types.Array(numba.types.float64, 3, "C")
    f4 = numba.types.Array(numba.types.float64, 4, "C")
    i8 = numba.types.int64
    return [(js_rows, (f4, f3, i8, i8, f4)), (w1_rows, (f4, f1, i8, i8, f4))]
