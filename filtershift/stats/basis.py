"""The PCA basis of scaled filters, as a scikit-learn-like estimator fitted from per-record co-moments.

Fitting reads pass 1 only (:meth:`RecordStats.moments`); per-group bases come from the same per-record
co-moments, with no new pass.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from filtershift.errors import InputError
from filtershift.stats._attrs import ATTRS, describe, describe_vars
from filtershift.stats.cache import RecordStats, as_stats
from filtershift.stats.grouping import group_comoments, groups
from filtershift.stats.moments import K
from filtershift.stats.pca import pca_from_moments, scaled_totals
from filtershift.store.format import DEFAULT_CHUNK_FILTERS as CHUNK


def eigenimages(components: np.ndarray) -> xr.DataArray:
    """Components as 3x3 images (component, y, x), row-major like the filters."""
    c = np.asarray(components)
    out = xr.DataArray(c.reshape(c.shape[0], 3, 3), dims=("component", "y", "x"),
                       coords={"component": np.arange(c.shape[0]), "y": np.arange(3), "x": np.arange(3)},
                       name="eigenimages")
    return describe(out, *ATTRS["eigenimages"])


class Basis:
    """PCA of scaled filters (each divided by its largest |w|), centred by their mean.

    ``fit`` accepts a filtershift Dataset (one pass over the data), a :class:`RecordStats`, or an in-memory
    (N, 9) / (N, 3, 3) array. Learned: ``mean_``, ``components_`` (component, k), ``explained_variance_``
    (ddof=1), ``explained_variance_ratio_``, ``n_samples_``; ``stats_`` keeps the per-record statistics so that
    later distributions of the same Dataset cost no extra moments pass.

    Parameters
    ----------
    n_components : int, default 9
        Number of principal components kept, an integer in [1, 9].

    Attributes
    ----------
    mean_ : numpy.ndarray
        Mean scaled filter, shape (9,).
    components_ : numpy.ndarray
        Principal axes, shape (n_components, 9) (component, k), by decreasing explained variance.
    explained_variance_ : numpy.ndarray
        Variance of the coefficients along each component (ddof=1), shape (n_components,).
    explained_variance_ratio_ : numpy.ndarray
        Share of the total variance per component, shape (n_components,).
    n_samples_ : int
        Number of filters the basis was fitted on.
    n_features_in_ : int
        Number of coefficients per filter (9).
    stats_ : RecordStats or None
        The per-record statistics of the fitted Dataset or RecordStats; None when fitted on an array.

    Raises
    ------
    filtershift.errors.InputError
        From ``fit``: ``n_components`` outside [1, 9], an array not of shape (N, 9) or (N, 3, 3), fewer than 2
        filters, or NaN/infinite filters (a Dataset masked with ``ds.where(cond)`` without ``drop=True``).
    """

    def __init__(self, n_components: int = K):
        self.n_components = n_components

    def fit(self, X, y=None) -> Basis:
        if not isinstance(self.n_components, (int, np.integer)) or not 1 <= self.n_components <= K:
            raise InputError(f"n_components must be an integer in [1, {K}]; got {self.n_components!r}.")
        if isinstance(X, (xr.Dataset, xr.DataArray)):
            X = lazy_dataset(X)
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
        if not (np.isfinite(total).all() and np.isfinite(com).all()):
            raise InputError("fit: the filters hold NaN or infinite values, so no basis can be fitted. A Dataset "
                             "masked with ds.where(cond) keeps the filters it masks, as NaN: select the filters "
                             "with ds.sel(...) (lazy) or ds.where(cond.compute(), drop=True) instead.")
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

    def transform(self, X):
        """Coefficients of filters: (scaled filter - mean) projected on the components.

        A Dataset (its ``weights``) or a DataArray ``(filter, k)`` gives a lazy DataArray ``(filter, component)``
        that keeps the filter coordinates, block by block like the input (nothing is computed here); an array
        gives a numpy array (N, n_components).
        """
        from filtershift.stats.moments import coefficients

        self._check()
        if isinstance(X, (xr.Dataset, xr.DataArray)):
            return self._transform_lazy(_weights(X, "transform"))
        w = np.asarray(X)
        w = w.reshape(len(w), K) if w.ndim == 3 else w
        return coefficients(w, self.mean_, self.components_)

    def _transform_lazy(self, w: xr.DataArray) -> xr.DataArray:
        from filtershift.stats.moments import coefficients

        data = w.data if isinstance(w.data, da.Array) else da.from_array(np.asarray(w.data), chunks=(CHUNK, K))
        if data.numblocks[1] != 1:
            data = data.rechunk({1: K})
        nc = self.components_.shape[0]
        mean, comps = np.asarray(self.mean_, np.float64), np.asarray(self.components_, np.float64)
        coef = data.map_blocks(coefficients, mean, comps, chunks=(data.chunks[0], (nc,)), dtype=np.float64,
                               meta=np.empty((0, 0), np.float64))
        coords = w.drop_vars([c for c in w.coords if "k" in w[c].dims]).coords
        out = xr.DataArray(coef, dims=("filter", "component"), coords=coords, name="coefficients")
        out = out.assign_coords(component=np.arange(nc))
        return describe(out, *ATTRS["coefficients"])

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
        describe(ds, "PCA basis of scaled filters", "1", f"fitted on {int(self.n_samples_):,} filters")
        return describe_vars(ds)

    def __repr__(self) -> str:
        fitted = f", n_samples_={self.n_samples_:,}" if hasattr(self, "n_samples_") else ""
        return f"Basis(n_components={self.n_components}{fitted})"


def _weights(X, what: str) -> xr.DataArray:
    """The ``weights`` (filter, k) of a Dataset, or a DataArray of that shape."""
    w = X["weights"] if isinstance(X, xr.Dataset) and "weights" in X else X
    if not isinstance(w, xr.DataArray) or "filter" not in w.dims or w.sizes.get("k") != K or w.ndim != 2:
        raise InputError(f"{what}: expected a filtershift Dataset or its weights (filter, k) with k = {K}; got "
                         f"{type(X).__name__} with dims {dict(getattr(w, 'sizes', {}))}.")
    return w.transpose("filter", "k")


def lazy_dataset(X) -> xr.Dataset:
    """A Dataset whose weights are dask-backed: the passes map over blocks, so in-memory (numpy-backed) data, such
    as ``ds.isel(...).load()``, is cut into blocks of ``CHUNK`` filters (no copy)."""
    ds = X if isinstance(X, xr.Dataset) else _weights(X, "fit").to_dataset(name="weights")
    if isinstance(ds["weights"].data, da.Array):
        return ds
    return ds.chunk({"filter": min(CHUNK, max(ds.sizes["filter"], 1))})


def default_basis(stats: RecordStats) -> Basis:
    """The full-rank basis of ``stats`` (the one a Basis fitted on them set; else fitted now from pass 1)."""
    if isinstance(stats.default_basis, Basis):
        return stats.default_basis
    return Basis().fit(stats)


def fit_basis(data, n_components: int = K) -> Basis:
    """Fit the PCA basis of scaled filters of a Dataset (pass 1, lazy or in memory), RecordStats or array.

    NaN-masked filters (``ds.where(cond)`` without ``drop=True``) are refused: select them with ``ds.sel`` or
    ``ds.where(cond.compute(), drop=True)`` (xarray drops by a computed condition only).

    Parameters
    ----------
    data : xarray.Dataset, RecordStats or array_like
        A filtershift Dataset (one pass over the data), its :class:`RecordStats`, or an in-memory array of
        filters of shape (N, 9) or (N, 3, 3).
    n_components : int, default 9
        Number of principal components kept, an integer in [1, 9].

    Returns
    -------
    Basis
        The fitted basis (``mean_``, ``components_``, ``explained_variance_``, ``explained_variance_ratio_``,
        ``n_samples_``, ``stats_``).

    Raises
    ------
    filtershift.errors.InputError
        If ``n_components`` is out of range, an array has the wrong shape, the data hold fewer than 2 filters, or
        the filters hold NaN or infinite values.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> basis = filtershift.fit_basis(ds)
    >>> basis.explained_variance_ratio_.round(3)  # doctest: +SKIP
    >>> coef = basis.transform(ds)  # lazy DataArray (filter, component)
    """
    return Basis(n_components=n_components).fit(data)


def group_bases(data, by="task", *, min_filters: int = 1000, min_models: int = 2,
                keep_empty: bool = False, keep_missing: bool = False) -> xr.Dataset:
    """The same PCA fitted on each group's filters, from per-record co-moments (no new pass).

    The result has dims (group, component, k) with ``mean``, ``components``, ``eigenimages`` (group, component, y,
    x), ``explained_variance``, ``explained_variance_ratio``, ``n_filters``, ``n_models``, ``small`` and ``valid``
    (False for groups of fewer than 2 filters, whose values are NaN).

    Parameters
    ----------
    data : xarray.Dataset, RecordStats or Basis
        A filtershift Dataset, its :class:`RecordStats`, or a fitted :class:`Basis` (its statistics are reused).
    by : str or list of str, default "task"
        Grouping key or keys: a grouping coordinate of the Dataset or its column name, ``"depth"`` (deciles),
        ``"model"`` or ``"conv_depth"``; several keys group by their observed combinations.
    min_filters : int, default 1000
        Groups with fewer filters are flagged ``small``.
    min_models : int, default 2
        Groups with fewer models are flagged ``small``.
    keep_empty : bool, default False
        Keep every combination of the keys' labels as a group, even those without filters (then ``valid`` is
        False and the values NaN).
    keep_missing : bool, default False
        Keep the filters whose label is missing as a group of their own, as for :func:`distributions`; by
        default they are left out.

    Returns
    -------
    xarray.Dataset
        Dims (group, component, k, y, x): ``mean`` (group, k), ``components`` (group, component, k),
        ``eigenimages`` (group, component, y, x), ``explained_variance`` and ``explained_variance_ratio``
        (group, component), ``n_filters``, ``n_models``, ``small``, ``valid`` (group). With several keys, one
        coordinate per key along ``group``; attrs ``by``, ``min_filters``, ``min_models`` and those of
        :func:`distributions` on the filters left out for a missing label.

    Raises
    ------
    filtershift.errors.InputError
        If ``data`` is not a filtershift Dataset, RecordStats or fitted Basis, or a grouping key is unknown.
    """
    stats = as_stats(data)
    m = stats.moments()
    g = groups(m, by, keep_empty=keep_empty, keep_missing=keep_missing, tables=stats.tables)
    gn, gs, gc = group_comoments(g.membership, m["n"].values, m["scaled_sum"].values,
                                 m["scaled_comoment"].values, g.size)
    fits = [pca_from_moments(gn[i], gs[i], gc[i]) for i in range(g.size)]
    mean = np.array([f[0] for f in fits]).reshape(g.size, K)
    comps = np.array([f[1] for f in fits]).reshape(g.size, K, K)
    ev = np.array([f[2] for f in fits]).reshape(g.size, K)
    ratio = np.array([f[3] for f in fits]).reshape(g.size, K)
    rows, in_group = g.members
    members = set(zip(in_group, m["model_id"].values[rows]))
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
    out.attrs.update({"by": list(g.by), "min_filters": int(min_filters), "min_models": int(min_models),
                      **g.dropped(m)})
    describe(out, "PCA basis per group", "1", f"the PCA of scaled filters fitted on each {' x '.join(g.by)} group")
    return describe_vars(out)
