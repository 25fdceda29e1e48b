"""The numba JS and W1 matrix kernels against scipy, pair by pair, on the layouts the analyses pass: leading
replicate dims, enough groups for the threaded split, empty bins, NaN (empty) groups."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from filtershift.metrics import js, kernels, w1


def histograms(shape, rng, zeros=0.3):
    """Normalised histograms (..., group, component, bin) with some empty bins."""
    c = rng.poisson(3.0, shape).astype(np.float64) * (rng.random(shape) > zeros)
    c[..., 0] += 1                                       # no all-empty histogram
    return c / c.sum(-1, keepdims=True)


@pytest.mark.parametrize("groups", [5, 70])
def test_js_and_w1_equal_scipy_pair_by_pair(groups):
    rng = np.random.default_rng(groups)
    p = histograms((2, groups, 3, 12), rng)
    p[1, 4] = np.nan                                     # an empty group in the second replicate
    edges = np.linspace(-1.5, 2.5, 13)                   # equal widths, as every histogram of the analyses
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    got_js, got_w1 = js(p), w1(p, widths)
    assert got_js.shape == got_w1.shape == (2, groups, groups, 3)
    pairs = [(i, j) for i in range(groups) for j in range(groups)]
    for r in range(2):
        for i, j in pairs if groups < 10 else pairs[::37] + [(4, 9), (9, 4), (groups - 1, groups - 1)]:
            for c in range(3):
                a, b = p[r, i, c], p[r, j, c]
                if np.isnan(a).any() or np.isnan(b).any():
                    assert np.isnan(got_js[r, i, j, c]) and np.isnan(got_w1[r, i, j, c])
                    continue
                assert got_js[r, i, j, c] == pytest.approx(jensenshannon(a, b) ** 2, rel=1e-9, abs=1e-15)
                want = wasserstein_distance(centres, centres, a, b)      # masses at the bin centres
                assert got_w1[r, i, j, c] == pytest.approx(want, rel=1e-9, abs=1e-15)
    np.testing.assert_array_equal(got_js, np.swapaxes(got_js, 1, 2))
    np.testing.assert_array_equal(got_w1, np.swapaxes(got_w1, 1, 2))


def test_threaded_rows_equal_one_call():
    """The row split between threads gives the same bits as one call over all rows."""
    rng = np.random.default_rng(3)
    p = histograms((1, 90, 9, 70), rng)
    whole = np.empty((1, 90, 90, 9))
    ent = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
    kernels.js_rows(p, ent, 0, 90, whole)
    np.testing.assert_array_equal(js(p), whole)


@pytest.mark.parametrize("g,parts", [(0, 2), (1, 2), (2, 2), (7, 3), (647, 2), (647, 8)])
def test_row_splits_cover_the_triangle_evenly(g, parts):
    ranges = kernels.row_splits(g, parts)
    rows = [r for lo, hi in ranges for r in range(lo, hi)]
    assert rows == list(range(g))
    if g >= 100:
        pairs = [sum(g - i for i in range(lo, hi)) for lo, hi in ranges]
        assert len(pairs) == parts and max(pairs) <= 1.01 * g * (g + 1) / 2 / parts
