"""``ds.filtershift``: the analysis of a filtershift Dataset (or of its ``weights``) in xarray's accessor convention.

Thin over the public functions: ``.records``, ``.models``, ``.sel()``/``.isel()`` (selections as slices of
blocks, O(runs)), ``.basis()``, ``.distributions()``, ``.drift()``,
``.quality()`` and ``.groupby(*names)``. The passes over the data are shared: one accessor keeps one
:class:`~filtershift.stats.RecordStats` per Dataset, so ``ds.filtershift.basis()`` then
``ds.filtershift.drift(by="task")`` read pass 1 once.

Registered when this module is imported, which ``filtershift``'s lazy ``__getattr__`` does on the first access to
any public name (``fs.open_store``, ``fs.from_arrays``, ...). The store layer does not import it: the accessor
sits above the statistics, and the store layer must not depend on them.
"""

from __future__ import annotations

import xarray as xr


class _Common:
    """What the Dataset and DataArray accessors share: the tables and the lazy groupby."""

    def __init__(self, obj):
        self._obj = obj

    @property
    def records(self):
        """The records present (one row per record, or per part of a record cut by a selection)."""
        from filtershift.store.dataset import records

        return records(self._obj)

    @property
    def models(self):
        """The models present, every meta column (``n_filters`` counts their filters here)."""
        from filtershift.store.dataset import models

        return models(self._obj)

    @property
    def record_table(self):
        """Per-record meta (model_id, conv depth, grouping labels as categoricals), indexed by record id."""
        from filtershift.store.dataset import record_table

        return record_table(self._obj)

    def groupers(self, *names: str) -> dict:
        """``{name: UniqueGrouper(labels=...)}`` for ``names``, labels from the tables (see :func:`groupby`)."""
        from filtershift.store.dataset import groupers

        return groupers(self._obj, *names)

    def groupby(self, *names: str):
        """xarray's own GroupBy over per-filter coordinates, lazy: ``ds.filtershift.groupby("task").mean()``,
        ``.groupby("task", "conv_depth")``. Names are coordinates or original meta column names.

        Plain ``ds.groupby("task")`` cannot stay lazy: xarray needs the labels of a dask coordinate up front
        ("Please pass `labels` to UniqueGrouper when grouping by a chunked array."); here they come from the
        tables (O(records)), so nothing of size N is computed to find the groups."""
        if not names:
            from filtershift.errors import InputError

            raise InputError("groupby needs at least one coordinate name, e.g. groupby('task').")
        return self._obj.groupby(**self.groupers(*names))


@xr.register_dataset_accessor("filtershift")
class DatasetAccessor(_Common):
    """``ds.filtershift``: the tables, a lazy groupby and the analysis of a filtershift Dataset."""

    def __init__(self, ds: xr.Dataset):
        super().__init__(ds)
        self._stats = None
        self._key = None

    @property
    def stats(self):
        """The :class:`~filtershift.stats.RecordStats` of this Dataset, shared by the methods below (each pass is
        computed once). Renewed when ``weights`` or the index were replaced in place."""
        from filtershift.stats import record_stats

        ds = self._obj
        key = (id(ds["weights"].variable), getattr(ds["weights"].data, "name", None), id(ds.xindexes.get("record")))
        if self._stats is None or key != self._key:
            self._stats, self._key = record_stats(_lazy(ds)), key
        return self._stats

    def sel(self, **labels) -> xr.Dataset:
        """``ds.sel(**labels)`` on the record index, in O(runs + chunks): the same labels (a label, a list, an
        inclusive slice, or a boolean condition per row of ``records``/``models`` for ``record``/``model_id``) and
        the same result, but the weights are slices of blocks (one task per output chunk) instead of one position
        per selected filter, which costs a minute and GiBs for 4e7 filters in xarray/dask."""
        from filtershift.store.dataset import record_index
        from filtershift.store.multislice import select_runs

        starts, lengths = record_index(self._obj).runs_matching(labels)
        return select_runs(self._obj, starts, lengths)

    def query(self, where: str) -> xr.Dataset:
        """The filters of the records that satisfy ``where``, an expression over meta columns (the ``--where`` of
        the command line, :mod:`filtershift.store.query`), e.g. ``'task == "Classification" and conv_depth_norm
        <= 0.3'``; a lazy selection like :meth:`sel`, O(records + runs). Nothing matching is an error."""
        from filtershift.store.dataset import query

        return query(self._obj, where)

    def isel(self, filter=None) -> xr.Dataset:
        """``ds.isel(filter=...)`` (a slice, integer positions or a boolean mask over ``filter``) as slices of
        blocks: the positions become runs (O(positions) in numpy, no dask fancy indexing), see :meth:`sel`."""
        import numpy as np

        from filtershift.errors import InputError
        from filtershift.store.dataset import record_index
        from filtershift.store.multislice import runs_of_positions, select_runs

        size = record_index(self._obj).size
        if filter is None:
            filter = slice(None)
        if isinstance(filter, slice):
            lo, hi, step = filter.indices(size)
            if step == 1:
                return select_runs(self._obj, [lo], [max(hi - lo, 0)])
            filter = np.arange(lo, hi, step)
        pos = np.asarray(filter.values if isinstance(filter, (xr.DataArray, xr.Variable)) else filter)
        if pos.ndim != 1:
            raise InputError("filtershift.isel takes a slice, a 1-D array of positions or a boolean mask over "
                             "filter; for one filter pass a list, e.g. isel(filter=[3]).")
        if pos.dtype.kind == "b":
            if len(pos) != size:
                raise InputError(f"a boolean mask over filter needs {size} values; got {len(pos)}.")
            pos = np.flatnonzero(pos)
        elif pos.size and pos.dtype.kind not in "iu":
            raise InputError(f"filter positions must be integers; got {pos.dtype}.")
        pos = pos.astype(np.int64)
        pos = np.where(pos < 0, pos + size, pos)
        if pos.size and (pos.min() < 0 or pos.max() >= size):
            raise InputError(f"filter positions out of range for {size} filters.")
        return select_runs(self._obj, *runs_of_positions(pos))

    def basis(self, n_components: int | None = None):
        """The PCA basis of the scaled filters (:func:`filtershift.fit_basis`; pass 1): all 9 components unless
        ``n_components`` is given."""
        from filtershift.stats import fit_basis

        return fit_basis(self.stats) if n_components is None else fit_basis(self.stats, n_components=n_components)

    def distributions(self, by="task", basis=None, **kw) -> xr.Dataset:
        """Per-group coefficient distributions (:func:`filtershift.distributions`), with this Dataset's basis
        unless ``basis`` is given; filters whose label is missing are left out (attrs ``n_filters_dropped``,
        ``n_models_dropped``) unless ``keep_missing=True``."""
        from filtershift.stats import distributions

        return distributions(self.stats, basis, by=by, **kw)

    def drift(self, by="task", metric: str = "kl_sym", basis=None, **kw) -> xr.DataArray:
        """The drift matrix (group_a, group_b) of a grouping (:func:`filtershift.drift` of
        :func:`filtershift.distributions`); ``kw`` go to ``distributions`` (bins, min_filters, min_models,
        keep_missing, ...). Filters whose label is missing are left out, as in a pandas ``groupby`` (attrs
        ``n_filters_dropped``, ``n_models_dropped``), unless ``keep_missing=True`` keeps them as a group."""
        from filtershift.stats import drift

        return drift(self.distributions(by=by, basis=basis, **kw), metric=metric)

    def quality(self, *, models: bool = False, **kw):
        """The per-layer quality table (:func:`filtershift.layer_quality`), or per model with ``models=True``
        (:func:`filtershift.model_quality`); ``kw``: sparsity_eps, thresholds, orthogonality."""
        from filtershift.stats.quality import layer_quality, model_quality

        return (model_quality if models else layer_quality)(self.stats, **kw)


@xr.register_dataarray_accessor("filtershift")
class DataArrayAccessor(_Common):
    """``ds.weights.filtershift``: the tables and a lazy groupby of a DataArray on the ``filter`` dimension."""


def _lazy(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with dask-backed weights (the passes map over blocks; see :func:`filtershift.stats.basis.fit`)."""
    from filtershift.stats.basis import lazy_dataset

    return lazy_dataset(ds)
