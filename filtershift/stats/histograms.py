"""Pass 3: per-record coefficient histograms and, in the same pass, the 2D histogram of two components
(chunk / combine); the reference normalisation. Distributions of groupings are built from these in
:mod:`filtershift.stats.distributions`.

The fused numba kernel scales, projects and bins each filter once, with np.histogram's semantics (uniform edges
from numpy.linspace, last bin closed, values outside the range dropped, except rounding-level excess: see
``EDGE_TOLERANCE``); :func:`hist_reference` is the numpy definition it must equal. The 2D histogram
(:class:`Density2D`) is counted from the same projected block with numpy.histogram2d's semantics (no tolerance:
its range is fixed, not taken from the data, and values outside it are dropped, as the CNN-Filter-DB notebook's
``fast_histogram.histogram2d`` drops them). :data:`HIST2D` counts it alone, for a 2D histogram asked for after
pass 3 ran or per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from filtershift.stats import reduction
from filtershift.stats.moments import BLOCK, coef_block, coefficients, load_block, mean_projection

EPS32 = float(np.finfo(np.float32).eps)
_NONE = np.zeros(0)


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


@numba.njit(nogil=True, cache=True, inline="always")
def pair_bin(x, edges, scale):
    """numpy.histogram2d's bin of ``x`` on linspace ``edges`` (``scale`` = bins / width): ``[edge_b, edge_b+1)``,
    the last bin closed; -1 outside the range or NaN. The estimate is corrected against the edges, as numpy's
    searchsorted would place ``x``."""
    n = edges.size - 1
    if not (x >= edges[0] and x <= edges[n]):
        return -1
    b = min(int((x - edges[0]) * scale), n - 1)
    if x < edges[b]:
        b -= 1
    elif b < n - 1 and x >= edges[b + 1]:
        b += 1
    return b


@numba.njit(nogil=True, cache=True)
def hist_kernel(w, starts, mean, comps, edges, fine_edges, counts, fine_counts, pair, pair_edges, run_group,
                pair_counts):
    """Per run: counts[run, component, bin] (and on ``fine_edges`` when given) of the filters' coefficients; with
    ``pair_edges``, from the same coefficients, pair_counts[run_group[run], bin of component pair[0], bin of
    component pair[1]] (numpy.histogram2d's layout; runs of group -1 skipped). ``edges`` empty: no 1D counts."""
    nc = comps.shape[0]
    mc = mean_projection(mean, comps)
    wt = np.empty((11, BLOCK))
    c = np.empty((nc, BLOCK))
    idx = np.empty(BLOCK, np.int32)
    use_1d = edges.size > 1
    use_fine = fine_edges.size > 1
    use_pair = pair_edges.size > 1
    uniform = use_1d and linspace_edges(edges)
    fine_uniform = use_fine and linspace_edges(fine_edges)
    px, py = pair[0], pair[1]
    pscale = (pair_edges.size - 1) / (pair_edges[-1] - pair_edges[0]) if use_pair else 0.0
    rows = np.zeros((nc, edges.size if use_1d else 1), np.int64)
    fine_rows = np.zeros((nc, fine_edges.size if use_fine else 1), np.int64)
    for r in range(starts.size - 1):
        rows[:] = 0
        fine_rows[:] = 0
        g = run_group[r] if use_pair else -1
        for a in range(starts[r], starts[r + 1], BLOCK):
            nb = min(BLOCK, starts[r + 1] - a)
            load_block(w, a, nb, wt)
            coef_block(wt, nb, mc, comps, c)
            for j in range(nc if use_1d else 0):
                _bin_row(c, j, nb, edges, rows[j], idx, uniform)
                if use_fine:
                    _bin_row(c, j, nb, fine_edges, fine_rows[j], idx, fine_uniform)
            if g >= 0:
                for i in range(nb):
                    bx = pair_bin(c[px, i], pair_edges, pscale)
                    by = pair_bin(c[py, i], pair_edges, pscale)
                    if bx >= 0 and by >= 0:
                        pair_counts[g, bx, by] += 1
        if use_1d:
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


@dataclass(frozen=True)
class Density2D:
    """A 2D histogram of two components' coefficients: ``components`` (x, y), ``bins`` per axis, one ``range``
    (lower, upper) for both axes (edges numpy.linspace(lower, upper, bins + 1)). Hashable: it keys the cache."""

    components: tuple = (0, 1)
    bins: int = 512
    range: tuple = (-3.3, 3.3)

    def __post_init__(self):
        object.__setattr__(self, "components", tuple(int(c) for c in self.components))
        object.__setattr__(self, "bins", int(self.bins))
        object.__setattr__(self, "range", (float(self.range[0]), float(self.range[1])))

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.range[0], self.range[1], self.bins + 1)

    def params(self) -> dict:
        """The entries of a pass-3 ``params`` dict that ask :func:`hist_chunk` for this histogram."""
        return {"pair": np.asarray(self.components, np.int64), "pair_edges": self.edges}


def hist_chunk(weights, record, params) -> dict:
    """Pass-3 partial of one block: ``counts`` per record present x component x bin (on ``params["edges"]``;
    none when they are empty) and, when ``params`` hold a :meth:`Density2D.params`, ``density``: the block's 2D
    counts (group, x bin, y bin), a total over its filters, with the group of each record from
    ``pair_record``/``pair_group``/``n_groups`` when given (else one group)."""
    perm, ids, starts = reduction.runs(record)
    w = np.ascontiguousarray(weights if perm is None else weights[perm])
    edges, fine_edges = params.get("edges", _NONE), params.get("fine_edges", _NONE)
    pair_edges = params.get("pair_edges", _NONE)
    nc = params["components"].shape[0]
    nb, nf, npb = (max(len(e) - 1, 0) for e in (edges, fine_edges, pair_edges))
    counts = np.zeros((len(ids), nc, nb), np.int64)
    fine = np.zeros((len(ids), nc, nf), np.int64)
    pair = np.asarray(params.get("pair", (0, 0)), np.int64)
    if "pair_group" in params:
        run_group = np.asarray(params["pair_group"], np.int64)[np.searchsorted(params["pair_record"], ids)]
    else:
        run_group = np.zeros(len(ids), np.int64)
    density = np.zeros((params.get("n_groups", 1), npb, npb) if npb else (1, 1, 1), np.int64)
    hist_kernel(w, starts, params["mean"], params["components"], edges, fine_edges, counts, fine, pair, pair_edges,
                run_group, density)
    out = {"record": ids}
    if nb:
        out["counts"] = counts
    if nf:
        out["fine_counts"] = fine
    if npb:
        out["density"] = density
    return out


def hist_combine(*parts: dict) -> dict:
    return reduction.merge(parts, {k: "total" if k == "density" else "sum" for k in parts[0] if k != "record"})


#: Pass 3, with the 2D histogram when asked for. Records absent from every block have empty histograms (the
#: default fill, 0).
HISTOGRAMS = reduction.Statistic("histograms", chunk=hist_chunk, combine=hist_combine, finalize=reduction.unchanged,
                                 totals=("density",))

#: The 2D histogram alone (the same chunk without 1D edges), when pass 3 did not count it.
HIST2D = reduction.Statistic("density2d", chunk=hist_chunk, combine=hist_combine, finalize=reduction.unchanged,
                             totals=("density",))


def coarsen2d(counts: np.ndarray, edges: np.ndarray, min_count: float, min_bins: int = 16):
    """``counts`` (last two axes: bins x bins on ``edges``) with the bins per axis halved (2 x 2 bins summed)
    while the filters per occupied bin average fewer than ``min_count``, down to ``min_bins`` per axis; returns
    (counts, edges). Halving keeps every other edge, which is bit for bit the edge numpy.linspace gives for half the
    bins, so the result equals numpy.histogram2d with the coarser bins; it stops where that would not hold (an odd
    number of bins). ``min_count`` 0 keeps the bins."""
    counts, edges = np.asarray(counts), np.asarray(edges)
    while True:
        n = counts.shape[-1]
        occupied = np.count_nonzero(counts.reshape(-1, n, n).sum(0))
        if n % 2 or n // 2 < min_bins or occupied == 0 or counts.sum() >= min_count * occupied:
            return counts, edges
        half = edges[::2]
        if not np.array_equal(half, np.linspace(edges[0], edges[-1], n // 2 + 1)):
            return counts, edges
        counts = counts.reshape(counts.shape[:-2] + (n // 2, 2, n // 2, 2)).sum(axis=(-3, -1))
        edges = half


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
