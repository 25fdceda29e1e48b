"""Per-group PCA components matched to the global basis: one-to-one by largest |cosine|, signs fixed, near-tied
eigenvalues flagged (pure numpy/scipy on the fitted components; no data access).

A group's PCA orders its components by its own variances and picks each one's sign arbitrarily, so two groups
whose filters share a basis can still draw it in another order (components of nearly equal variance, c1/c2 in the
CNN-Filter-DB, swap freely) or sign. Matching each global component to the group component it is most parallel
to, by an optimal assignment on |cosine| (scipy's ``linear_sum_assignment``), makes rows of eigenimages
comparable; the cosines say how well each match holds.
"""

from __future__ import annotations

import numpy as np

from filtershift.errors import InputError

#: Two eigenvalues of a group are near-tied when they differ by at most this share of the larger one.
TIE_RTOL = 0.05


def align_to(basis_components, group_components, ratios, *, rtol: float = TIE_RTOL) -> dict:
    """Match a group's components to the global ones one-to-one by largest |cosine| and fix their signs.

    Parameters
    ----------
    basis_components : array_like
        The global components, shape (c, k), one unit vector per row.
    group_components : array_like
        The group's components, shape (c, k), one unit vector per row, in the group's own order.
    ratios : array_like
        The group's explained variance (or its ratio), shape (c,), in the group's own order.
    rtol : float, default 0.05
        Two of the group's eigenvalues are near-tied when ``|a - b| <= rtol * max(a, b)``.

    Returns
    -------
    dict
        ``order`` (c,) int: the group component matched to global component j is ``order[j]``; ``signs`` (c,)
        of +1/-1 so that ``signs[j] * group_components[order[j]]`` has a positive cosine with global component j;
        ``cosines`` (c,): those cosines (after the sign fix, so >= 0); ``tied`` (c,) bool: the group component
        drawn at j has an eigenvalue near-tied (``rtol``) with another of the group's eigenvalues; ``aligned``
        (c, k): the group's components in that order and with those signs.

    Raises
    ------
    filtershift.errors.InputError
        If the shapes differ or a value is not finite (a group without a basis has NaN components: skip it).
    """
    from scipy.optimize import linear_sum_assignment

    base = np.asarray(basis_components, np.float64)
    comps = np.asarray(group_components, np.float64)
    ev = np.asarray(ratios, np.float64)
    if base.ndim != 2 or comps.shape != base.shape or ev.shape != base.shape[:1]:
        raise InputError(f"align_to: expected components of one shape (c, k) and ratios (c,); got "
                         f"{base.shape}, {comps.shape} and {ev.shape}.")
    if not (np.isfinite(base).all() and np.isfinite(comps).all() and np.isfinite(ev).all()):
        raise InputError("align_to: the components or ratios hold NaN or infinite values (a group of fewer than 2 "
                         "filters has no basis); align valid groups only.")
    cos = base @ comps.T                                     # (global j, group i)
    rows, cols = linear_sum_assignment(-np.abs(cos))
    order = cols[np.argsort(rows)]
    matched = cos[np.arange(len(order)), order]
    signs = np.where(matched < 0, -1, 1)
    return {"order": order, "signs": signs, "cosines": matched * signs,
            "tied": near_tied(ev, rtol)[order], "aligned": signs[:, None] * comps[order]}


def near_tied(values, rtol: float = TIE_RTOL) -> np.ndarray:
    """Per value, whether another value lies within ``rtol`` of the larger of the two (``|a - b| <= rtol max``)."""
    v = np.asarray(values, np.float64)
    diff = np.abs(v[:, None] - v[None, :])
    close = diff <= rtol * np.maximum(np.abs(v[:, None]), np.abs(v[None, :]))
    np.fill_diagonal(close, False)
    return close.any(1)
