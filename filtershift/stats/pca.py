"""PCA of scaled filters from their count, sum and co-moment (pure numpy; no pass over the data).

The per-record cache (:mod:`filtershift.stats.cache`) uses it for the basis its passes 2 and 3 project on when none
is given; :class:`filtershift.stats.basis.Basis` wraps it as an estimator, so both give the same basis bit for bit.
"""

from __future__ import annotations

import numpy as np

from filtershift.stats.grouping import group_comoments
from filtershift.stats.moments import K


def pca_from_moments(n, total, comoment, n_components: int = K):
    """Mean, components (rows, sign: largest |entry| positive), explained variance (ddof=1) and ratio."""
    n = float(n)
    if n < 2:
        nan = np.full(n_components, np.nan)
        return (np.full(K, np.nan), np.full((n_components, K), np.nan), nan, nan.copy())
    mean = np.asarray(total, np.float64) / n
    cov = np.asarray(comoment, np.float64) / (n - 1)
    cov = (cov + cov.T) / 2
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals = np.clip(vals[order], 0.0, None)
    comps = vecs[:, order].T
    big = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(K), big])[:, None]
    tot = vals.sum()
    ratio = vals / tot if tot > 0 else np.full(K, np.nan)
    return mean, comps[:n_components], vals[:n_components], ratio[:n_components]


def scaled_totals(n, scaled_sum, scaled_comoment):
    """Count, sum and co-moment of all filters from pass 1's per-record ones (exact, as one group)."""
    codes = np.zeros(len(n), np.int64)
    _, total, com = group_comoments(codes, n, scaled_sum, scaled_comoment, 1)
    return int(np.sum(n)), total[0], com[0]
