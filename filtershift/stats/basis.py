"""The PCA basis of scaled filters, as a scikit-learn-like estimator fitted from per-record co-moments.

Fitting reads pass 1 only (:meth:`RecordStats.moments`); per-group bases come from the same per-record
co-moments, with no new pass.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats.cache import RecordStats, as_stats
from filtershift.stats.grouping import group_comoments, groups
from filtershift.stats.moments import K
from filtershift.stats.pca import pca_from_moments, scaled_totals


def eigenimages(components: np.ndarray) -> xr.DataArray:
    """Components as 3x3 images (component, y, x), row-major like the filters."""
    c = np.asarray(components)
    return xr.DataArray(c.reshape(c.shape[0], 3, 3), dims=("component", "y", "x"),
                        coords={"component": np.arange(c.shape[0]), "y": np.arange(3), "x": np.arange(3)},
                        name="eigenimages")


class Basis:
    """PCA of scaled filters (each divided by its largest |w|), centred by their mean.

    ``fit`` accepts a filtershift Dataset (one pass over the data), a :class:`RecordStats`, or an in-memory
    (N, 9) / (N, 3, 3) array. Learned: ``mean_``, ``components_`` (component, k), ``explained_variance_``
    (ddof=1), ``explained_variance_ratio_``, ``n_samples_``; ``stats_`` keeps the per-record statistics so that
    later distributions of the same Dataset cost no extra moments pass.
    """

    def __init__(self, n_components: int = K):
        self.n_components = n_components

    def fit(self, X, y=None) -> "Basis":
        if not isinstance(self.n_components, (int, np.integer)) or not 1 <= self.n_components <= K:
            raise InputError(f"n_components must be an integer in [1, {K}]; got {self.n_components!r}.")
        if isinstance(X, (xr.Dataset, RecordStats)):
            stats = as_stats(X)
            m = stats.moments()
            n, total, com = scaled_totals(m["n"].values, m["scaled_sum"].values, m["scaled_comoment"].values)
            self.stats_ = stats
        else:
            from filtershift.stats.moments import moments_chunk

            w = np.asarray(X, dtype=np.float32)
            w = w.reshape(len(w), K) if w.ndim == 3 else w
            if w.ndim != 2 or w.shape[1] != K:
                raise InputError(f"X has shape {np.shape(X)}; expected (N, 9) or (N, 3, 3).")
            n = len(w)
            if n:
                part = moments_chunk(w, np.zeros(n, np.int64))
                total, com = part["scaled_sum"][0], part["scaled_comoment"][0]
            self.stats_ = None
        if n < 2:
            raise InputError(f"fit: a basis needs at least 2 filters; the data hold {n}.")
        self.mean_, self.components_, self.explained_variance_, self.explained_variance_ratio_ = \
            pca_from_moments(n, total, com, self.n_components)
        self.n_samples_ = n
        self.n_features_in_ = K
        if self.stats_ is not None and self.n_components == K:
            self.stats_.set_default_basis(self)
        return self

    def _check(self):
        if not hasattr(self, "components_"):
            raise InputError("this Basis is not fitted yet; call fit(ds) or filtershift.fit_basis(ds) first.")

    def transform(self, X) -> np.ndarray:
        """Coefficients of in-memory filters: (scaled filter - mean) projected on the components."""
        from filtershift.stats.moments import coefficients

        self._check()
        w = np.asarray(X)
        w = w.reshape(len(w), K) if w.ndim == 3 else w
        return coefficients(w, self.mean_, self.components_)

    @property
    def eigenimages(self) -> xr.DataArray:
        self._check()
        return eigenimages(self.components_)

    def to_dataset(self) -> xr.Dataset:
        """The basis as a labelled Dataset (mean, components, eigenimages, explained variance and ratio)."""
        self._check()
        nc = self.components_.shape[0]
        ds = xr.Dataset(
            {"mean": ("k", self.mean_), "components": (("component", "k"), self.components_),
             "eigenimages": self.eigenimages,
             "explained_variance": ("component", self.explained_variance_),
             "explained_variance_ratio": ("component", self.explained_variance_ratio_)},
            coords={"component": np.arange(nc), "k": np.arange(K)})
        ds.attrs.update({"n_samples": int(self.n_samples_), "scaling": "filter / max|filter|",
                         "sign": "largest |entry| of each component positive", "ddof": 1})
        return ds

    def __repr__(self) -> str:
        fitted = f", n_samples_={self.n_samples_:,}" if hasattr(self, "n_samples_") else ""
        return f"Basis(n_components={self.n_components}{fitted})"


def default_basis(stats: RecordStats) -> Basis:
    """The full-rank basis of ``stats`` (the one a Basis fitted on them set; else fitted now from pass 1)."""
    if isinstance(stats.default_basis, Basis):
        return stats.default_basis
    return Basis().fit(stats)


def fit_basis(data, n_components: int = K) -> Basis:
    """Fit the PCA basis of scaled filters of a Dataset (pass 1), RecordStats or array."""
    return Basis(n_components=n_components).fit(data)


def group_bases(data, by="task", *, min_filters: int = 1000, min_models: int = 2,
                keep_empty: bool = False) -> xr.Dataset:
    """The same PCA fitted on each group's filters, from per-record co-moments (no new pass).

    Returns dims (group, component, k) with ``mean``, ``components``, ``eigenimages`` (group, component, y, x),
    ``explained_variance``, ``explained_variance_ratio``, ``n_filters``, ``n_models``, ``small`` and ``valid``
    (False for groups of fewer than 2 filters, whose values are NaN).
    """
    stats = as_stats(data)
    m = stats.moments()
    g = groups(m, by, keep_empty=keep_empty)
    gn, gs, gc = group_comoments(g.codes, m["n"].values, m["scaled_sum"].values,
                                 m["scaled_comoment"].values, g.size)
    fits = [pca_from_moments(gn[i], gs[i], gc[i]) for i in range(g.size)]
    mean = np.array([f[0] for f in fits]).reshape(g.size, K)
    comps = np.array([f[1] for f in fits]).reshape(g.size, K, K)
    ev = np.array([f[2] for f in fits]).reshape(g.size, K)
    ratio = np.array([f[3] for f in fits]).reshape(g.size, K)
    members = {(c, mid) for c, mid in zip(g.codes, m["model_id"].values) if c >= 0}
    n_models = np.bincount(np.array([c for c, _ in members], np.int64), minlength=g.size) if members \
        else np.zeros(g.size, np.int64)
    coords = {"group": np.array(g.labels, dtype=object), "component": np.arange(K), "k": np.arange(K),
              "y": np.arange(3), "x": np.arange(3)}
    if len(g.by) > 1:
        coords.update({name: ("group", np.array(labels, dtype=object)) for name, labels in g.columns.items()})
    out = xr.Dataset(
        {"mean": (("group", "k"), mean), "components": (("group", "component", "k"), comps),
         "eigenimages": (("group", "component", "y", "x"), comps.reshape(g.size, K, 3, 3)),
         "explained_variance": (("group", "component"), ev),
         "explained_variance_ratio": (("group", "component"), ratio),
         "n_filters": ("group", gn.astype(np.int64)), "n_models": ("group", n_models.astype(np.int64)),
         "small": ("group", (gn < min_filters) | (n_models < min_models)), "valid": ("group", gn >= 2)},
        coords=coords)
    out.attrs.update({"by": list(g.by), "min_filters": int(min_filters), "min_models": int(min_models)})
    return out
