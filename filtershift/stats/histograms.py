"""Pass 3: per-record coefficient histograms (chunk / combine), the reference normalisation, and the optional
2D-density pass. Distributions of groupings are built from these in :mod:`filtershift.stats.distributions`.

The fused numba kernel scales, projects and bins each filter once, with np.histogram's semantics (uniform edges
from numpy.linspace, last bin closed, values outside the range dropped, except rounding-level excess: see
``EDGE_TOLERANCE``); :func:`hist_reference` is the numpy
definition it must equal. :data:`HIST2D` is a separate, optional pass (a 2D histogram of two components).
"""

from __future__ import annotations

import numba
import numpy as np

from filtershift.stats import reduction
from filtershift.stats.moments import BLOCK, coef_block, coefficients, load_block, mean_projection

EPS32 = float(np.finfo(np.float32).eps)


#: Values beyond the range by at most this fraction of its width count in the edge bin: the range comes from
#: the same data (pass 2), so such values are rounding differences, never data outside the range.
EDGE_TOLERANCE = 1e-9


@numba.njit(nogil=True, cache=True)
def bin_index(x, edges):
    """np.histogram's bin of ``x`` for uniform ``edges`` (-1 when outside): an estimate corrected against the
    edges exactly as np.histogram does, so the result is the same bin."""
    nb = edges.size - 1
    lo, hi = edges[0], edges[nb]
    tol = EDGE_TOLERANCE * (hi - lo)
    if x < lo:
        return 0 if x >= lo - tol else -1
    if x > hi:
        return nb - 1 if x <= hi + tol else -1
    if not (x >= lo and x <= hi):
        return -1
    i = int((x - lo) * (nb / (hi - lo)))
    if i == nb:
        i -= 1
    if x < edges[i]:
        i -= 1
    if i != nb - 1 and x >= edges[i + 1]:
        i += 1
    return i


@numba.njit(nogil=True, cache=True)
def linspace_edges(edges):
    """True when ``edges`` are exactly numpy.linspace(edges[0], edges[-1], len(edges)): edge b is then
    ``b * step + lo`` (linspace's own arithmetic), so :func:`_bin_row` need not look the edges up."""
    n = edges.size - 1
    lo, hi = edges[0], edges[n]
    step = (hi - lo) / n
    for b in range(n):  # noqa: SIM110 - a numba kernel: the explicit loop compiles, all(<generator>) does not
        if edges[b] != b * step + lo:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _bin_row(c, j, nb, edges, row, idx, uniform):
    """Add the bins of c[j, :nb] to ``row`` with np.histogram's semantics (as :func:`bin_index`); ``row`` has one
    extra slot that collects values outside the range. For ``uniform`` edges (see :func:`linspace_edges`) the
    estimate and its exact correction against the edges run in one branch-free loop that vectorises; the counting
    follows over ``idx`` (scratch of length >= nb)."""
    n_edges = edges.size - 1
    last = n_edges - 1
    lo, hi = edges[0], edges[n_edges]
    scale = n_edges / (hi - lo)
    step = (hi - lo) / n_edges
    tol = EDGE_TOLERANCE * (hi - lo)
    lo_t, hi_t = lo - tol, hi + tol
    lastf, outside = float(last), float(n_edges)
    for i in range(nb):      # bins as whole floats (b * step is then linspace's product): the loop vectorises
        x = c[j, i]
        inside = (x >= lo_t) & (x <= hi_t)
        xc = min(max(x, lo), hi) if inside else lo
        b = min(np.floor((xc - lo) * scale), lastf)
        if uniform:
            e_lo = b * step + lo
            e_hi = hi if b == lastf else (b + 1.0) * step + lo
            b = b - 1.0 if xc < e_lo else (b + 1.0 if (b != lastf) & (xc >= e_hi) else b)
        idx[i] = np.int32(b if inside else outside)
    if not uniform:
        for i in range(nb):
            b = idx[i]
            if b < n_edges:
                x = min(max(c[j, i], lo), hi)
                if x < edges[b]:
                    idx[i] = b - 1
                elif b != last and x >= edges[b + 1]:
                    idx[i] = b + 1
    for i in range(nb):
        row[idx[i]] += 1


@numba.njit(nogil=True, cache=True)
def hist_kernel(w, starts, mean, comps, edges, fine_edges, counts, fine_counts):
    """Per run: counts[run, component, bin] (and on ``fine_edges`` when given) of the filters' coefficients."""
    nc = comps.shape[0]
    mc = mean_projection(mean, comps)
    wt = np.empty((11, BLOCK))
    c = np.empty((nc, BLOCK))
    idx = np.empty(BLOCK, np.int32)
    use_fine = fine_edges.size > 1
    uniform = linspace_edges(edges)
    fine_uniform = use_fine and linspace_edges(fine_edges)
    rows = np.zeros((nc, edges.size), np.int64)
    fine_rows = np.zeros((nc, fine_edges.size if use_fine else 1), np.int64)
    for r in range(starts.size - 1):
        rows[:] = 0
        fine_rows[:] = 0
        for a in range(starts[r], starts[r + 1], BLOCK):
            nb = min(BLOCK, starts[r + 1] - a)
            load_block(w, a, nb, wt)
            coef_block(wt, nb, mc, comps, c)
            for j in range(nc):
                _bin_row(c, j, nb, edges, rows[j], idx, uniform)
                if use_fine:
                    _bin_row(c, j, nb, fine_edges, fine_rows[j], idx, fine_uniform)
        counts[r] += rows[:, :-1]
        if use_fine:
            fine_counts[r] += fine_rows[:, :-1]


def hist_reference(w, starts, mean, components, edges) -> np.ndarray:
    """Plain numpy definition of :func:`hist_kernel`: np.histogram per run and component."""
    c = coefficients(w, mean, components)
    out = np.zeros((len(starts) - 1, c.shape[1], len(edges) - 1), np.int64)
    for r, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        for j in range(c.shape[1]):
            out[r, j] = np.histogram(c[a:b, j], bins=len(edges) - 1, range=(edges[0], edges[-1]))[0]
    return out


def hist_chunk(weights, record, params) -> dict:
    """Pass-3 partial of one block: counts per record present x component x bin."""
    perm, ids, starts = reduction.runs(record)
    w = np.ascontiguousarray(weights if perm is None else weights[perm])
    nc, nb, nf = params["components"].shape[0], len(params["edges"]) - 1, max(len(params["fine_edges"]) - 1, 0)
    counts = np.zeros((len(ids), nc, nb), np.int64)
    fine = np.zeros((len(ids), nc, nf), np.int64)
    hist_kernel(w, starts, params["mean"], params["components"], params["edges"], params["fine_edges"], counts,
                fine)
    out = {"record": ids, "counts": counts}
    if nf:
        out["fine_counts"] = fine
    return out


def hist_combine(*parts: dict) -> dict:
    return reduction.merge(parts, {k: "sum" for k in parts[0] if k != "record"})


#: Pass 3. Records absent from every block have empty histograms (the default fill, 0).
HISTOGRAMS = reduction.Statistic("histograms", chunk=hist_chunk, combine=hist_combine, finalize=reduction.unchanged)


def normalise(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The reference normalisation along the last axis: density, empty bins set to float32 eps, then sum 1.
    All-empty histograms give NaN."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = counts / (total * np.diff(edges))
    dens = np.where(dens == 0, EPS32, dens)
    dens = np.where(total > 0, dens, np.nan)
    return dens / dens.sum(-1, keepdims=True)


# -- 2D density: an optional extra pass ----------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def hist2d_kernel(w, group, mean, comps, j0, j1, edges, out):
    """out[group, bin of component j0, bin of component j1] for every filter (group -1 skipped)."""
    mc = mean_projection(mean, comps)
    wt = np.empty((11, BLOCK))
    c = np.empty((comps.shape[0], BLOCK))
    for a in range(0, w.shape[0], BLOCK):
        nb = min(BLOCK, w.shape[0] - a)
        load_block(w, a, nb, wt)
        coef_block(wt, nb, mc, comps, c)
        for i in range(nb):
            g = group[a + i]
            if g < 0:
                continue
            y = bin_index(c[j0, i], edges)
            x = bin_index(c[j1, i], edges)
            if y >= 0 and x >= 0:
                out[g, y, x] += 1


def hist2d_chunk(weights, record, params) -> dict:
    """2D partial of one block, keyed by group (the per-record group index travels in ``params``)."""
    rec = np.asarray(record)
    pos = np.searchsorted(params["record"], rec)
    group = params["group"][pos] if len(rec) else np.zeros(0, np.int64)
    nb = len(params["edges"]) - 1
    out = np.zeros((params["n_groups"], nb, nb), np.int64)
    hist2d_kernel(np.ascontiguousarray(weights), group, params["mean"], params["components"], params["j0"],
                  params["j1"], params["edges"], out)
    return {"counts": out}


def hist2d_combine(*parts: dict) -> dict:
    counts = parts[0]["counts"].copy()
    for p in parts[1:]:
        counts += p["counts"]
    return {"counts": counts}


HIST2D = reduction.Statistic("density2d", chunk=hist2d_chunk, combine=hist2d_combine, finalize=reduction.unchanged)
