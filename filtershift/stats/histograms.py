"""Pass 3: per-record coefficient histograms, and distributions of any grouping from them (no new pass).

The fused numba kernel scales, projects and bins each filter once, with np.histogram's semantics (uniform edges
from numpy.linspace, last bin closed, values outside the range dropped, except rounding-level excess: see
``EDGE_TOLERANCE``); :func:`hist_reference` is the numpy
definition it must equal. ``density2d`` is a separate, optional pass (a 2D histogram of two components).
"""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats import engine
from filtershift.stats._attrs import describe, describe_vars
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
    for b in range(n):
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
    perm, ids, starts = engine.runs(record)
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
    return engine.merge(parts, {k: "sum" for k in parts[0] if k != "record"})


HISTOGRAMS = engine.Statistic("histograms", chunk=hist_chunk, combine=hist_combine)


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


def distributions(data, basis=None, by="task", bins: int = 70, *, min_filters: int = 1000, min_models: int = 2,
                  keep_empty: bool = False, fine_bins: int = 0, range=None) -> xr.Dataset:
    """Per-group coefficient distributions: a 70-bin histogram per component over one global range.

    ``data`` is a Dataset, a :class:`RecordStats` or a fitted basis (then its statistics are reused, so asking
    for more groupings costs no pass). Returns dims (group, component, bin) with ``p`` (normalised histograms,
    NaN for empty groups), ``counts``, ``n_filters``, ``n_models``, ``small`` (under ``min_filters`` or
    ``min_models``), the basis' ``explained_variance_ratio`` (drift weights), and the per-(group, model)
    ``member_counts`` used by :func:`drift_ci`. ``fine_bins`` > 0 adds ``fine_counts`` for :func:`kde`.
    """
    stats = _stats_for(data, basis)
    basis = basis if basis is not None else stats.basis()
    m = stats.moments()
    h = stats.histograms(basis, bins, fine_bins, range=range)
    g = engine.groups(m, by, keep_empty=keep_empty)
    counts = engine.group_sum(g.codes, h["counts"].values, g.size)
    n_filters = engine.group_sum(g.codes, m["n"].values, g.size)
    model_ids = m["model_id"].values
    members = pd.DataFrame({"group": g.codes, "model": model_ids})
    members = members[members["group"] >= 0]
    pairs = members.drop_duplicates().sort_values(["group", "model"]).reset_index(drop=True)
    member_of = pd.MultiIndex.from_frame(pairs).get_indexer(pd.MultiIndex.from_frame(members))
    member_codes = np.full(len(g.codes), -1, np.int64)
    member_codes[np.flatnonzero(g.codes >= 0)] = member_of
    member_counts = engine.group_sum(member_codes, h["counts"].values, len(pairs))
    n_models = np.bincount(pairs["group"].to_numpy(), minlength=g.size)
    edges = h["bin_edges"].values
    data_vars = {
        "p": (("group", "component", "bin"), normalise(counts, edges)),
        "counts": (("group", "component", "bin"), counts),
        "n_filters": ("group", n_filters.astype(np.int64)),
        "n_models": ("group", n_models.astype(np.int64)),
        "small": ("group", (n_filters < min_filters) | (n_models < min_models)),
        "explained_variance_ratio": ("component", np.asarray(basis.explained_variance_ratio_, np.float64)),
        "explained_variance": ("component", np.asarray(basis.explained_variance_, np.float64)),
        "member_counts": (("member", "component", "bin"), member_counts),
        "member_group": ("member", pairs["group"].to_numpy(np.int64)),
        "member_model": ("member", pairs["model"].to_numpy(np.int64)),
    }
    if fine_bins:
        data_vars["fine_counts"] = (("group", "component", "fine_bin"),
                                    engine.group_sum(g.codes, h["fine_counts"].values, g.size))
    # exact per-group coefficient variance (for KDE bandwidths), from the scaled co-moments
    gn, _, gc = engine.group_comoments(g.codes, m["n"].values, m["scaled_sum"].values,
                                       m["scaled_comoment"].values, g.size)
    comps = np.asarray(basis.components_, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.einsum("jk,gkl,jl->gj", comps, gc, comps) / (gn[:, None] - 1)
    data_vars["coef_var"] = (("group", "component"), np.where(gn[:, None] > 1, var, np.nan))
    coords = {
        "group": np.array(g.labels, dtype=object),
        "component": np.arange(comps.shape[0]),
        "bin_edges": ("bin_edge", edges),
        "bin_lower": ("bin", edges[:-1]),
        "bin_upper": ("bin", edges[1:]),
    }
    if fine_bins:
        coords["fine_edges"] = ("fine_edge", h["fine_edges"].values)
    if len(g.by) > 1:
        coords.update({name: ("group", np.array(labels, dtype=object)) for name, labels in g.columns.items()})
    out = xr.Dataset(data_vars, coords=coords)
    out.attrs.update({"by": list(g.by), "bins": int(bins), "range": list(h.attrs["range"]),
                      "min_filters": int(min_filters), "min_models": int(min_models),
                      "n_filters_total": int(m["n"].values.sum()),
                      "normalisation": "density, empty bins = float32 eps, then sum 1"})
    out["p"].attrs["description"] = "normalised histogram per group and component"
    out["small"].attrs["description"] = f"n_filters < {min_filters} or n_models < {min_models}"
    describe(out, "coefficient distributions", "1",
             f"histograms of the PCA coefficients per {' x '.join(g.by)} group and component, {bins} bins over "
             "one global range")
    return describe_vars(out, DIST_ATTRS)


#: long_name, units, description of the variables of :func:`distributions` (see :mod:`filtershift.stats._attrs`).
DIST_ATTRS = {
    "p": ("probability per bin", "1", "normalised histogram per group and component"),
    "counts": ("coefficients per bin", "1", "count of the group's coefficients in each bin"),
    "n_filters": ("filters", "1", "filters in the group"),
    "n_models": ("models", "1", "models with filters in the group"),
    "small": ("small group", "1", "fewer filters than min_filters or fewer models than min_models"),
    "explained_variance_ratio": ("explained variance ratio", "1",
                                 "share of the total variance per component (the drift weights)"),
    "explained_variance": ("explained variance", "coefficient units squared",
                           "variance of the coefficients along each component (ddof=1)"),
    "member_counts": ("coefficients per bin and member", "1", "histogram of each (group, model) member"),
    "member_group": ("member's group", "1", "group index of each member"),
    "member_model": ("member's model", "1", "model_id of each member"),
    "fine_counts": ("coefficients per fine bin", "1", "count of the group's coefficients in each fine bin"),
    "coef_var": ("coefficient variance", "coefficient units squared",
                 "exact variance of the group's coefficients per component (ddof=1)"),
}


def _stats_for(data, basis):
    if isinstance(data, xr.Dataset) and basis is not None:
        s = getattr(basis, "stats_", None)
        if isinstance(s, engine.RecordStats) and s.ds is data:
            return s
    return engine.as_stats(data)


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


HIST2D = engine.Statistic("2D density", chunk=hist2d_chunk, combine=hist2d_combine)


def density2d(data, basis=None, components=(0, 1), bins: int = 512, by=None, keep_empty: bool = False,
              range=None) -> xr.DataArray:
    """2D histogram (counts) of two components over the global coefficient range: one extra pass.

    With ``by``, one histogram per group (group, y, x); y is the first component, x the second.
    """
    stats = _stats_for(data, basis)
    basis = basis if basis is not None else stats.basis()
    bins = engine._check_bins(bins, "bins")
    nc = basis.components_.shape[0]
    j0, j1 = (int(c) for c in components)
    if not (0 <= j0 < nc and 0 <= j1 < nc):
        raise InputError(f"components must be two indices in [0, {nc}); got {components!r}.")
    lo, hi = stats.coef_range(basis) if range is None else (float(range[0]), float(range[1]))
    m = stats.moments()
    if by is None:
        codes, labels = np.zeros(m.sizes["record"], np.int64), ["all"]
    else:
        g = engine.groups(m, by, keep_empty=keep_empty)
        codes, labels = g.codes, g.labels
    edges = np.linspace(lo, hi, bins + 1)
    params = {"record": m["record"].values, "group": codes, "n_groups": len(labels),
              "mean": np.asarray(basis.mean_, np.float64),
              "components": np.ascontiguousarray(basis.components_, np.float64), "j0": j0, "j1": j1,
              "edges": edges}
    stats.passes += 1
    part = engine.reduce(stats.ds, HIST2D, params=params, split_every=stats.split_every, desc="2D density")
    counts = part["counts"]
    centers = (edges[:-1] + edges[1:]) / 2
    da = xr.DataArray(counts, dims=("group", "y", "x"),
                      coords={"group": np.array(labels, dtype=object), "y": centers, "x": centers},
                      name="density2d",
                      attrs={"components": [j0, j1], "range": [lo, hi], "bins": bins, "bin_edges": edges,
                             "description": f"counts of (component {j0}, component {j1}) coefficients",
                      "long_name": "2D coefficient histogram", "units": "1"})
    return da if by is not None else da.isel(group=0, drop=True)
