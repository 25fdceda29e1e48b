"""Gaussian KDE curves per group and component (for ridge plots), from binned counts: no coefficients are ever
materialised and no pass over the data is made.

The KDE of binned data puts each bin's count at its centre: ``f(x) = sum_i n_i phi_h(x - c_i) / n``. Use
``distributions(..., fine_bins=...)`` so that the bins are much narrower than the bandwidth; with the coarse
70 bins the bandwidth is floored at one bin width (recorded in ``bandwidth``).

The bandwidth is the CNN-Filter-DB notebook's: its ridge plots use KDEpy's ``FFTKDE(kernel="gaussian",
bw="silverman")``, whose rule is ``min(std, IQR / 1.349) * (3 n / 4) ** (-1 / 5)``; that is scipy's
``gaussian_kde(bw_method="silverman")`` (``std * (3 n / 4) ** (-1 / 5)``) wherever ``std <= IQR / 1.349``.
Binning changes the curve by at most 0.5 % of its peak when the bin width is at most 0.3 of the bandwidth
(tests/test_stats_analysis.py, ``test_binned_kde_equals_scipy_on_the_coefficients``; docs/report.md).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from filtershift.errors import InputError

#: The interquartile range of a standard normal distribution (KDEpy's constant).
NORMAL_IQR = 1.3489795003921634


def silverman(n, std, iqr) -> np.ndarray:
    """Silverman's rule as the notebook's KDEpy computes it: min(std, IQR / 1.349) (3 n / 4)^(-1/5) (std alone
    when the IQR is 0)."""
    n, std, iqr = (np.asarray(v, np.float64) for v in (n, std, iqr))
    spread = np.where(iqr > 0, np.minimum(std, iqr / NORMAL_IQR), std)
    with np.errstate(invalid="ignore", divide="ignore"):
        return spread * (0.75 * n) ** (-0.2)


def binned_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` of binned data (uniform within bins), along the last axis."""
    counts = np.asarray(counts, np.float64)
    cdf = np.cumsum(counts, -1)
    total = cdf[..., -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        target = q * total
    idx = np.clip(np.sum(cdf < target, axis=-1, keepdims=True), 0, counts.shape[-1] - 1)
    before = np.take_along_axis(cdf, idx, -1) - np.take_along_axis(counts, idx, -1)
    inside = np.take_along_axis(counts, idx, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(inside > 0, (target - before) / inside, 0.0)
    widths = np.diff(edges)
    return (edges[:-1][idx] + frac * widths[idx])[..., 0]


def kde(dist: xr.Dataset, points: int = 512, bandwidth="silverman", components=None) -> xr.DataArray:
    """Density curves (group, component, x) on ``points`` values over the global range.

    ``bandwidth``: ``"silverman"`` (per group and component, the notebook's rule from the exact coefficient
    variance of the moments and the binned IQR) or a number. Uses ``fine_counts`` when the distributions hold
    them, else ``counts``. Bandwidths are at least the bin width.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions` (ideally with ``fine_bins`` > 0).
    points : int, default 512
        Number of evaluation points over the global range, an integer >= 2.
    bandwidth : "silverman" or float, default "silverman"
        Silverman's rule as the notebook's KDEpy applies it, per group and component, or one positive bandwidth
        in coefficient units.
    components : int or sequence of int, optional
        Components to estimate; default all.

    Returns
    -------
    xarray.DataArray
        ``kde``: Gaussian kernel density with dims (group, component, x), NaN for empty groups; coords ``group``,
        ``component``, ``x``, ``bandwidth`` (group, component) and ``n_filters`` (group); attrs ``kernel``,
        ``rule``, ``data`` (which counts were used).

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a result of :func:`distributions`, ``points`` < 2, or ``bandwidth`` is neither
        ``"silverman"`` nor a positive number.
    """
    if not isinstance(dist, xr.Dataset) or "counts" not in dist:
        raise InputError("kde needs the result of filtershift.distributions(ds, basis, by=...).")
    if not isinstance(points, (int, np.integer)) or points < 2:
        raise InputError(f"points must be an integer >= 2; got {points!r}.")
    if "fine_counts" in dist:
        counts, edges = dist["fine_counts"].values, dist["fine_edges"].values
    else:
        counts, edges = dist["counts"].values, dist["bin_edges"].values
    comp = np.arange(dist.sizes["component"]) if components is None else np.atleast_1d(components)
    counts = np.asarray(counts, np.float64)[:, comp]
    n = counts.sum(-1)
    width = float(np.max(np.diff(edges)))
    if isinstance(bandwidth, str):
        if bandwidth != "silverman":
            raise InputError(f"bandwidth must be 'silverman' or a positive number; got {bandwidth!r}.")
        std = np.sqrt(dist["coef_var"].values[:, comp])
        iqr = binned_quantile(counts, edges, 0.75) - binned_quantile(counts, edges, 0.25)
        h = silverman(n, std, iqr)
    else:
        if not np.isscalar(bandwidth) or not bandwidth > 0:
            raise InputError(f"bandwidth must be 'silverman' or a positive number; got {bandwidth!r}.")
        h = np.full(n.shape, float(bandwidth))
    h = np.where(np.isfinite(h), np.maximum(h, width), np.nan)
    centres = (edges[:-1] + edges[1:]) / 2
    x = np.linspace(edges[0], edges[-1], points)
    dens = np.full(n.shape + (points,), np.nan)
    for g, j in np.ndindex(n.shape):
        if n[g, j] == 0 or not np.isfinite(h[g, j]):
            continue
        nz = counts[g, j] > 0
        z = (x[:, None] - centres[nz][None, :]) / h[g, j]
        dens[g, j] = (np.exp(-0.5 * z * z) @ counts[g, j, nz]) / (n[g, j] * h[g, j] * np.sqrt(2 * np.pi))
    return xr.DataArray(dens, dims=("group", "component", "x"),
                        coords={"group": dist["group"].values, "component": dist["component"].values[comp],
                                "x": x, "bandwidth": (("group", "component"), h),
                                "n_filters": ("group", dist["n_filters"].values)},
                        name="kde", attrs={"kernel": "gaussian", "rule": str(bandwidth),
                                           "data": "fine_counts" if "fine_counts" in dist else "counts",
                                           "long_name": "coefficient density", "units": "1/coefficient units",
                                           "description": "Gaussian kernel density of the coefficients per group "
                                                          "and component"})
