"""Is a drift value more than the spread between models? Permutation p-values for every pair of a drift matrix,
Benjamini-Hochberg adjusted across the matrix.

For a pair of groups (a, b) the test shuffles their members (a member is one model's filters in one group, the
per-model histograms of :func:`~filtershift.stats.distributions`) between the two groups, keeping the group sizes
in members, and recomputes the drift between the two pooled histograms. The p-value is
``(1 + #{permuted drift >= observed}) / (1 + n_perm)`` for ``n_perm`` random splits, or the exact share of splits
when there are no more distinct splits than ``n_perm`` (every split enumerated once). A pair of two one-model groups
has one distinct split up to symmetry, so it gets no p-value (NaN), and neither does a pair involving an empty group.
When groups overlap (``NAME:each``), a model that is a member of both groups of a pair stays in both under every
split; only the models in one of the two are shuffled (and counted for the rules above). No pass over the data:
everything runs on the small output of ``distributions``.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xarray as xr
from dask.system import cpu_count

from filtershift.errors import InputError
from filtershift.metrics import metric as declared
from filtershift.stats._attrs import describe
from filtershift.stats.divergence import _check_dist, drift, normalised_for, pairwise

#: Ties between a permuted and the observed drift are counted as "at least as large" within this relative tolerance
#: (the two are summed in different orders).
TIE = 1e-12


def pair_drift(dist: xr.Dataset, counts_a: np.ndarray, counts_b: np.ndarray, metric: str) -> np.ndarray:
    """The drift between pooled counts ``counts_a`` and ``counts_b`` (..., component, bin): (...), through the
    metric's per-bin split (half the work of the pairwise matrix, which computes both orders and the diagonal)."""
    m = declared(metric)
    widths = np.diff(dist["bin_edges"].values)
    weights = np.asarray(dist["explained_variance_ratio"].values, np.float64)
    if m.per_bin is None:
        p = normalised_for(dist, np.stack([counts_a, counts_b], axis=-3), metric)
        return pairwise(p, weights, metric, widths)[..., 0, 1]
    terms = m.per_bin(normalised_for(dist, counts_a, metric), normalised_for(dist, counts_b, metric), widths)
    return terms.sum(-1) @ weights


def splits(n_a: int, n_b: int, n_perm: int, rng) -> tuple[np.ndarray, bool]:
    """Membership in ``a`` (split, member) of the splits to test: all ``C(n_a + n_b, n_a)`` when that is at most
    ``n_perm`` (exact), else ``n_perm`` random ones; and whether they are exhaustive."""
    m = n_a + n_b
    total = math.comb(m, n_a)
    if total <= n_perm:
        out = np.zeros((total, m), bool)
        for i, chosen in enumerate(itertools.combinations(range(m), n_a)):
            out[i, list(chosen)] = True
        return out, True
    order = np.argsort(rng.random((n_perm, m)), axis=1)
    out = np.zeros((n_perm, m), bool)
    np.put_along_axis(out, order[:, :n_a], True, axis=1)
    return out, False


def p_value(observed: float, permuted: np.ndarray, exhaustive: bool) -> float:
    """The permutation p-value of ``observed`` among ``permuted`` (see the module docstring)."""
    hits = int(np.count_nonzero(permuted >= observed - TIE * max(abs(observed), 1e-300)))
    return hits / len(permuted) if exhaustive else (1 + hits) / (1 + len(permuted))


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values of the finite entries of ``p`` (NaN stays NaN): the k-th smallest of m
    becomes min over j >= k of p_(j) m / j, at most 1 (as ``scipy.stats.false_discovery_control``, whose import
    alone took a second of the report)."""
    p = np.asarray(p, np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    values = p[finite]
    if values.size:
        order = np.argsort(values, kind="stable")
        scaled = values[order] * values.size / np.arange(1, values.size + 1)
        adjusted = np.empty_like(values)
        adjusted[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
        out[finite] = adjusted
    return out


def _shuffled(dist: xr.Dataset, a: np.ndarray, b: np.ndarray) -> tuple:
    """The members of a pair that the test shuffles, and those that stay: with overlapping groups (attr
    ``overlapping``, a ``NAME:each`` key), the models that are members of both groups stay in both under every
    split (a model listing A and B is in A and in B); otherwise every member is shuffled."""
    if not dist.attrs.get("overlapping"):
        return (a, b), (a[:0], b[:0])
    model = dist["member_model"].values
    both = np.intersect1d(model[a], model[b])
    stay_a, stay_b = np.isin(model[a], both), np.isin(model[b], both)
    return (a[~stay_a], b[~stay_b]), (a[stay_a], b[stay_b])


def drift_test(dist: xr.Dataset, metric: str = "kl_sym", n_perm: int = 999, seed: int = 0,
               alpha: float = 0.05) -> xr.Dataset:
    """Permutation p-values for every pair of a drift matrix, Benjamini-Hochberg adjusted.

    See the module docstring for the test. Pairs are tested independently with a generator seeded by
    ``(seed, a, b)``, so a pair's p-value does not depend on the other groups.

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`distributions`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric tested (see :func:`drift`).
    n_perm : int, default 999
        Random splits per pair (fewer when all distinct splits fit: then the p-value is exact), an integer >= 1.
    seed : int, default 0
        Seed (the same seed gives the same p-values).
    alpha : float, default 0.05
        False discovery rate for ``significant``.

    Returns
    -------
    xarray.Dataset
        ``drift``, ``p_value``, ``p_adjusted`` (Benjamini-Hochberg over the finite p-values of the upper triangle,
        mirrored), ``significant`` (``p_adjusted <= alpha``) and ``n_splits`` (splits tested per pair), dims
        (group_a, group_b) with the coordinates of :func:`drift`; attrs ``metric``, ``n_perm``, ``seed``,
        ``alpha``, ``method``.

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a result of :func:`distributions`, ``metric`` is unknown, ``n_perm`` < 1 or ``alpha``
        is not in (0, 1).

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> test = filtershift.drift_test(filtershift.distributions(ds, by="task"), n_perm=199)
    >>> test["p_adjusted"].dims
    ('group_a', 'group_b')
    """
    _check_dist(dist)
    declared(metric)
    if not isinstance(n_perm, (int, np.integer)) or isinstance(n_perm, bool) or n_perm < 1:
        raise InputError(f"n_perm must be an integer >= 1; got {n_perm!r}.")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1); got {alpha!r}.")
    point = drift(dist, metric)
    groups = dist.sizes["group"]
    member_group = dist["member_group"].values
    member_counts = dist["member_counts"].values.astype(np.float64)
    members = [np.flatnonzero(member_group == g) for g in range(groups)]
    values = point.values

    def test_pair(a: int, b: int) -> tuple[float, int]:
        """(p-value, splits tested) of the pair (a, b); (NaN, 0) when it has no test (see the module docstring)."""
        (in_a_only, in_b_only), (fixed_a, fixed_b) = _shuffled(dist, members[a], members[b])
        n_a, n_b = len(in_a_only), len(in_b_only)
        if n_a == 0 or n_b == 0 or (n_a == 1 and n_b == 1) or not np.isfinite(values[a, b]):
            return np.nan, 0
        pooled = member_counts[np.concatenate([in_a_only, in_b_only])]
        chosen, exhaustive = splits(n_a, n_b, int(n_perm), np.random.default_rng([seed, a, b]))
        flat = pooled.reshape(len(pooled), -1)
        moved = (chosen.astype(np.float64) @ flat).reshape((len(chosen),) + pooled.shape[1:])
        in_b = flat.sum(0).reshape(pooled.shape[1:]) - moved + member_counts[fixed_b].sum(0)
        in_a = moved + member_counts[fixed_a].sum(0)
        permuted = pair_drift(dist, in_a, in_b, metric)
        observed = float(pair_drift(dist, member_counts[members[a]].sum(0), member_counts[members[b]].sum(0), metric))
        return p_value(observed, permuted, exhaustive), len(chosen)

    pairs = list(itertools.combinations(range(groups), 2))
    # each pair's work is a few large numpy operations that release the GIL: one thread per core this process may
    # use (dask's count, as the local cluster's)
    with ThreadPoolExecutor(min(cpu_count(), 8), thread_name_prefix="filtershift-test") as pool:
        tested = list(pool.map(lambda pair: test_pair(*pair), pairs))
    p = np.full((groups, groups), np.nan)
    n_splits = np.zeros((groups, groups), np.int64)
    for (a, b), (p_ab, n_ab) in zip(pairs, tested):
        p[a, b] = p[b, a] = p_ab
        n_splits[a, b] = n_splits[b, a] = n_ab
    upper = np.triu_indices(groups, 1)
    adjusted = np.full((groups, groups), np.nan)
    adjusted[upper] = bh_adjust(p[upper])
    adjusted.T[upper] = adjusted[upper]
    coords = point.coords
    out = xr.Dataset({
        "drift": point,
        "p_value": describe(xr.DataArray(p, coords=coords, dims=point.dims), "permutation p-value", "1",
                            "share of member splits between the two groups whose drift is at least the observed"),
        "p_adjusted": describe(xr.DataArray(adjusted, coords=coords, dims=point.dims), "adjusted p-value", "1",
                               "Benjamini-Hochberg adjusted across the pairs of the matrix"),
        "significant": describe(xr.DataArray(adjusted <= alpha, coords=coords, dims=point.dims), "significant",
                                "1", f"p_adjusted <= {alpha} (false discovery rate)"),
        "n_splits": describe(xr.DataArray(n_splits, coords=coords, dims=point.dims), "splits tested", "1",
                             "member splits tested for the pair (all of them when fewer than n_perm exist)"),
    })
    out.attrs.update({"metric": metric, "n_perm": int(n_perm), "seed": seed, "alpha": float(alpha),
                      "method": "permutation of members (models) between the two groups; Benjamini-Hochberg"})
    return describe(out, f"{declared(metric).long_name} with permutation p-values", declared(metric).units,
                    f"drift, permutation p-values ({n_perm} splits per pair at most) and BH-adjusted p-values")
