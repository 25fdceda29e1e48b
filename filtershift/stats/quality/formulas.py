"""The quality metrics' formulas: each metric per record, vectorised, from per-record statistics.

The definitions are those of torchconvquality 0.3.0 (Gavrikov & Keuper's library) and of the CNN-Filter-DB
notebook's ``layer_quality_worker``, which agree except on two edge cases (:data:`CONVENTIONS`; the notebook's
is the default); see ``docs/quality.md`` for them and for the few places where filtershift's value differs and
why. Every metric except orthogonality is *finalized* here from
the per-record statistics of the cache's passes (no pass of its own): pass 1 gives ``n``, the raw sum and
co-moment, ``max |w|`` and the sums of the l1/l2 norms; pass 2 (for ``sparsity_eps``) the count of sparse filters
and the co-moment of the non-sparse ones.
"""

from __future__ import annotations

import numpy as np

from filtershift.stats.moments import K

#: torchconvquality's entropy threshold (a logistic in log2 n fitted to a "min distribution"): l, x0, k, b.
THRESHOLD_PARAMS = (1.2618047, 2.30436435, 0.88767525, -0.31050834)
#: The per-layer metrics, in table order.
METRICS = ("sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean",
           "variance_entropy_clean_norm", "orthogonality", "l1_norm", "l2_norm", "l1_norm_std", "l2_norm_std")
#: Where the two references differ: a layer of zeros (the notebook's threshold 0 marks no filter sparse:
#: sparsity 0; torchconvquality replaces it by 1: sparsity 1) and the entropy of n >= 2 filters with zero variance
#: (the notebook's ``scipy.stats.entropy`` of zero variances: NaN; torchconvquality: 0). The first is the default.
CONVENTIONS = ("notebook", "torchconvquality")


def check_convention(convention) -> str:
    """``convention`` if it is one of :data:`CONVENTIONS`, else an InputError listing them."""
    if convention not in CONVENTIONS:
        from filtershift.errors import InputError

        raise InputError(f"convention must be 'notebook' (the CNN-Filter-DB notebook, default) or "
                         f"'torchconvquality'; got {convention!r}.")
    return convention


def entropy_threshold(n) -> np.ndarray:
    """torchconvquality's entropy threshold for ``n`` filters, ``height / (1 + exp(-k (log2 n - x0))) + b``.

    It is negative for n <= 2 and equals ``b`` for n = 0 (log2 0 = -inf), as in the reference.
    """
    height, x0, k, b = THRESHOLD_PARAMS
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return height / (1.0 + np.exp(-k * (np.log2(n) - x0))) + b


def variance_entropy(comoment, n, zero_variance: float = 0.0) -> np.ndarray:
    """Base-10 entropy of the eigenvalue shares of ``comoment / (n - 1)`` per record (vectorised).

    ``comoment`` (..., 9, 9) is the centred sum of outer products of the raw filters. 0 for n = 0, NaN for n = 1
    (the variance of one filter divides by n - 1 = 0), ``zero_variance`` for n >= 2 filters that are all equal
    (torchconvquality: 0; the notebook: NaN). Zero shares contribute 0 (0 log 0 = 0); rounding-level negative
    eigenvalues count as 0.
    """
    com = np.asarray(comoment, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), com.shape[:-2])
    lam = np.clip(np.linalg.eigvalsh(com), 0.0, None) if com.size else np.zeros(com.shape[:-1])
    den = lam.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = lam / np.where(den > 0, den, 1.0)[..., None]
        terms = np.where(p > 0, p * np.log10(np.where(p > 0, p, 1.0)), 0.0)
    out = -terms.sum(axis=-1)
    return np.where(n == 1, np.nan, np.where(den > 0, out, np.where(n >= 2, zero_variance, 0.0))) + 0.0


def weight_std(n, raw_sum, raw_comoment) -> np.ndarray:
    """Standard deviation (ddof 0) of all 9 n weights of each record, from its sum and co-moment."""
    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(raw_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = s / n[:, None]
        m = s.sum(axis=1) / (K * n)
        ss = np.trace(np.asarray(raw_comoment, np.float64), axis1=1, axis2=2) + n * ((mu - m[:, None]) ** 2).sum(1)
        return np.sqrt(np.clip(ss, 0.0, None) / (K * n))


def finalize(n, raw_sum, raw_comoment, raw_l1_sum, raw_l2_sum, sparse_count, nonsparse_n,
             nonsparse_comoment, convention: str = "notebook") -> dict:
    """Per-record metrics (arrays over records) from the statistics of passes 1 and 2.

    ``sparse_count`` and the non-sparse statistics follow torchconvquality for a layer of zeros (all sparse);
    with ``convention="notebook"`` (default) such a layer has no sparse filter, and filters of zero variance have
    NaN entropy (:data:`CONVENTIONS`).

    Returns ``n``, ``n_nonsparse``, ``sparsity``, ``variance_entropy`` and ``_norm``, ``variance_entropy_clean``
    and ``_norm`` (entropy of the non-sparse filters, normalised by the threshold of their count), the mean
    per-filter ``l1_norm`` and ``l2_norm`` and the same divided by the record's weight standard deviation
    (``*_std``: scale-free, comparable across models trained at different weight scales). NaN where undefined.
    """
    notebook = check_convention(convention) == "notebook"
    n = np.asarray(n, dtype=np.int64)
    nn = np.asarray(nonsparse_n, dtype=np.int64)
    if notebook:
        zero = (n > 0) & (np.asarray(raw_l1_sum, np.float64) == 0)       # a layer of zeros: no filter is sparse
        sparse_count = np.where(zero, 0, sparse_count)
        nn = np.where(zero, n, nn)
        nonsparse_comoment = np.where(zero[:, None, None], raw_comoment, nonsparse_comoment)
    nf = n.astype(np.float64)
    flat = np.nan if notebook else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ve = variance_entropy(raw_comoment, n, flat)
        vec = variance_entropy(nonsparse_comoment, nn, flat)
        l1 = np.asarray(raw_l1_sum, np.float64) / nf
        l2 = np.asarray(raw_l2_sum, np.float64) / nf
        sd = weight_std(n, raw_sum, raw_comoment)
        sd = np.where(sd > 0, sd, np.nan)
        return {
            "n": n, "n_nonsparse": nn,
            "sparsity": np.asarray(sparse_count, np.float64) / nf,
            "variance_entropy": ve, "variance_entropy_norm": ve / entropy_threshold(n),
            "variance_entropy_clean": vec, "variance_entropy_clean_norm": vec / entropy_threshold(nn),
            "l1_norm": l1, "l2_norm": l2, "l1_norm_std": l1 / sd, "l2_norm_std": l2 / sd,
        }
