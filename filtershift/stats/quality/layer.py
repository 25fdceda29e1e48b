"""Quality of one layer held in memory: the sparse filters, orthogonality, and every metric of the layer.

:func:`layer_metrics` builds the per-record statistics of one layer with numpy and finalizes them with the same
formulas as the out-of-core tables (:func:`filtershift.stats.quality.formulas.finalize`).
"""

from __future__ import annotations

import numpy as np

from filtershift.errors import InputError
from filtershift.stats.moments import K, comoment
from filtershift.stats.quality.formulas import finalize

#: Rows of the Gram matrix computed at once by :func:`layer_orthogonality` (bounds its memory).
GRAM_ROWS = 1024


def check_eps(sparsity_eps) -> float:
    """``sparsity_eps`` as a float in (0, 1), or an ``InputError`` saying why 0 and 1 are refused."""
    try:
        eps = float(sparsity_eps)
    except (TypeError, ValueError):
        eps = -1.0
    if not 0.0 < eps < 1.0:
        raise InputError(f"sparsity_eps must be in (0, 1); got {sparsity_eps!r} (torchconvquality replaces a zero "
                         "threshold by 1, so eps = 0 would mark every filter with all |w| < 1 sparse).")
    return eps


def sparse_mask(w, sparsity_eps: float = 0.01) -> np.ndarray:
    """Filters (rows of ``w``) whose every |w| is below ``eps * max |w|`` of the layer (all of them if the layer is
    zero). The threshold is rounded to the dtype of ``w`` before comparing, as torch compares a tensor with a
    Python float."""
    w = np.asarray(w)
    eps = check_eps(sparsity_eps)
    amax = float(np.abs(w).max()) if w.size else 0.0
    t = amax * eps
    if t == 0:
        t = 1.0
    return np.all(np.abs(w) < w.dtype.type(t), axis=1)


def layer_orthogonality(w, out_channels: int) -> float:
    """1 - mean |cosine similarity| between the out-channel weight vectors of one layer (off-diagonal pairs).

    ``w`` holds the layer's filters in PyTorch order (out, in/groups, 3, 3) or as (out * in/groups, 9) rows.
    As torchconvquality: an all-zero out-channel keeps a zero vector, so its diagonal term |0 - 1| counts in the
    sum. NaN for fewer than 2 out channels (the reference divides by zero there).
    """
    out = int(out_channels)
    a = np.asarray(w, dtype=np.float64)
    if out < 2 or a.size == 0 or a.size % out:
        return float("nan")
    a = a.reshape(out, -1)
    norm = np.linalg.norm(a, axis=1)
    a = a / np.where(norm > 0, norm, 1.0)[:, None]
    total = 0.0
    for lo in range(0, out, GRAM_ROWS):
        g = a[lo:lo + GRAM_ROWS] @ a.T
        idx = np.arange(lo, min(lo + GRAM_ROWS, out))
        g[idx - lo, idx] -= 1.0
        total += np.abs(g).sum()
    return float(1.0 - total / (out * (out - 1)))


def layer_metrics(w, sparsity_eps: float = 0.01, out_channels: int | None = None,
                  convention: str = "notebook") -> dict:
    """All metrics of one layer held in memory: ``w`` (out, in/groups, 3, 3), (n, 3, 3) or (n, 9).

    The 4-d shape gives the out channels for orthogonality; otherwise pass ``out_channels`` (NaN when unknown).

    Parameters
    ----------
    w : array_like
        The layer's finite weights, shape (out, in/groups, 3, 3), (n, 3, 3) or (n, 9).
    sparsity_eps : float, default 0.01
        A filter is sparse when its every |w| is below ``sparsity_eps`` times the layer's largest |w|.
    out_channels : int, optional
        Number of output channels, for orthogonality; taken from a 4-d ``w`` when not given.
    convention : {"notebook", "torchconvquality"}, default "notebook"
        Where the references differ (a layer of zeros, filters of zero variance; see
        :data:`~filtershift.stats.quality.formulas.CONVENTIONS`), whose values to give.

    Returns
    -------
    dict
        ``n``, ``n_nonsparse`` (int) and the float metrics of :data:`METRICS` (``sparsity``, ``variance_entropy``
        and its ``_norm``, ``_clean`` and ``_clean_norm`` variants, ``orthogonality``, ``l1_norm``, ``l2_norm``,
        ``l1_norm_std``, ``l2_norm_std``).

    Raises
    ------
    filtershift.errors.InputError
        If ``w`` has another shape or holds NaN or infinite values, or ``convention`` is unknown.
    """
    a = np.asarray(w)
    if a.ndim == 4 and a.shape[2:] == (3, 3):
        out_channels = a.shape[0] if out_channels is None else out_channels
    if a.ndim >= 2 and a.shape[-2:] == (3, 3):
        a = a.reshape(-1, K)
    if a.ndim != 2 or a.shape[1] != K:
        raise InputError(f"w has shape {np.shape(w)}; expected (out, in, 3, 3), (n, 3, 3) or (n, 9).")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError("w holds NaN or infinite values; the metrics are defined for finite weights only.")
    mask = sparse_mask(a, sparsity_eps)
    raw = a.astype(np.float64)
    keep = raw[~mask]
    res = finalize(np.array([len(raw)]), raw.sum(0)[None], comoment(raw)[None], [np.abs(raw).sum()],
                   [np.sqrt((raw ** 2).sum(1)).sum()], [int(mask.sum())], [len(keep)], comoment(keep)[None],
                   convention=convention)
    out = {k: (int(v[0]) if v.dtype.kind == "i" else float(v[0])) for k, v in res.items()}
    out["orthogonality"] = (layer_orthogonality(raw, out_channels) if out_channels is not None
                            else float("nan"))
    return out
