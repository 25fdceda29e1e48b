"""The drift metrics, each declared once: name, label, units, its per-component divergence and the histogram
normalisation it reads. Add a metric here and every consumer (``filtershift.stats.drift``, ``compare``, the report
spec and page, ``filtershift drift/compare --metric``) offers it.

The CLI builds its parser from :data:`METRICS` without numpy, so numpy is imported inside the functions only, and
the numba kernels of the JS and W1 matrices (:mod:`filtershift.metrics.kernels`) when a matrix is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from filtershift.errors import InputError


@dataclass(frozen=True)
class Metric:
    """A divergence between per-component histograms, summed over components with the explained-variance weights.

    ``divergence(p, widths)`` takes ``p`` (..., group, component, bin) and the bin widths and returns
    (..., group, group, component). ``per_bin(p, q, widths)`` splits the divergence of two histograms (..., bin)
    into one non-negative term per bin that sums to it (which bins drive a drift; None: no attribution).
    ``smoothed``: ``p`` is the reference normalisation (density, empty bins set to float32 eps, sum 1); otherwise
    the plain shares of the counts.
    """

    name: str
    label: str
    units: str
    divergence: Callable
    per_bin: Callable | None = None
    smoothed: bool = True
    description: str = ""
    long_name: str = ""


def kl_sym(p, widths=None):
    """KL(p||q) + KL(q||p) per component, for every pair of groups (the reference metric)."""
    import numpy as np

    logp = np.log(p)
    self_term = np.einsum("...gkb,...gkb->...gk", p, logp)
    cross = np.einsum("...gkb,...hkb->...ghk", p, logp)
    return self_term[..., :, None, :] + self_term[..., None, :, :] - cross - np.swapaxes(cross, -2, -3)


def js(p, widths=None):
    """Jensen-Shannon divergence (natural log) per component, for every pair of groups."""
    from filtershift.metrics import kernels

    return kernels.js(p)


def w1(p, widths=None):
    """Wasserstein-1 per component for masses at the bin centres (``widths``: bin widths)."""
    if widths is None:
        raise ValueError("w1 needs the bin widths")
    from filtershift.metrics import kernels

    return kernels.w1(p, widths)


def kl_sym_bins(p, q, widths=None):
    """Per bin: (p - q)(log p - log q), the terms of KL(p||q) + KL(q||p)."""
    import numpy as np

    return (p - q) * (np.log(p) - np.log(q))


def js_bins(p, q, widths=None):
    """Per bin: (p log p + q log q) / 2 - m log m with m = (p + q) / 2, the terms of JS(p, q)."""
    from scipy.special import xlogy

    m = (p + q) * 0.5
    return 0.5 * (xlogy(p, p) + xlogy(q, q)) - xlogy(m, m)


def w1_bins(p, q, widths=None):
    """Per bin: |CDF_p - CDF_q| at the bin's upper edge times the bin width, the terms of W1 (masses at centres)."""
    import numpy as np

    if widths is None:
        raise ValueError("w1 needs the bin widths")
    return np.abs(np.cumsum(p, -1) - np.cumsum(q, -1)) * np.asarray(widths, np.float64)


#: The registry: name -> Metric, in the order the report and the CLI list them (the first is the default).
METRICS = {m.name: m for m in (
    Metric("kl_sym", "symmetric KL", "nats", kl_sym, kl_sym_bins,
           description="symmetric Kullback-Leibler divergence (the reference)",
           long_name="symmetric Kullback-Leibler divergence"),
    Metric("js", "Jensen-Shannon", "nats", js, js_bins, description="Jensen-Shannon divergence, natural log",
           long_name="Jensen-Shannon divergence"),
    Metric("w1", "Wasserstein", "coefficient units", w1, w1_bins, smoothed=False,
           description="Wasserstein-1 distance between the histograms", long_name="Wasserstein-1 distance"),
)}
#: The default metric.
DEFAULT = next(iter(METRICS))


def metric(name: str) -> Metric:
    """The declared metric called ``name``, or an InputError listing the choices."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise InputError(f"metric must be one of {list(METRICS)}; got {name!r}.") from None


def help_text() -> str:
    """One line for a ``--metric`` option: every metric's name and description."""
    return "; ".join(f"{m.name}: {m.description}" for m in METRICS.values())
