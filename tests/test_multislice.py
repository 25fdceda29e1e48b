"""Selections as slices of blocks (issue #13): ``take_runs``, ``select_runs``, ``fs.select``,
``ds.filtershift.sel``/``isel`` and the chunks ``RecordIndex`` predicts for ``ds.sel``.

Each selection is checked against numpy fancy indexing of the weights read with zarr, and the tables against
pandas; one small store of eight chunks (conftest.py) serves every case.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from sources import LABELLED_CHUNK

import filtershift as fs
from filtershift.errors import InputError

CHUNK = LABELLED_CHUNK


@pytest.fixture(scope="module")
def store(labelled_store):
    """(ds, weights read with zarr, per-filter pandas frame) of conftest's 30,000-filter store in 8 chunks."""
    return labelled_store.ds, labelled_store.weights, labelled_store.per_filter


def _random_runs(rng, size: int, k: int):
    starts = np.sort(rng.choice(size, k, replace=False)) if k else np.zeros(0, np.int64)
    lengths = np.minimum(rng.integers(0, 3 * CHUNK, k), size - starts)
    return starts, lengths


def _positions(starts, lengths):
    return np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)] + [np.zeros(0, np.int64)])


class _Sizes(Callback):
    """Largest number of rows of any array a task of the graph returned (the final concatenation of the result,
    done by ``compute`` itself, is not a task of the graph)."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def _posttask(self, key, result, dsk, state, id):
        if isinstance(key, tuple) and isinstance(result, np.ndarray) and result.ndim:
            self.rows = max(self.rows, result.shape[0])


def test_take_runs_equals_numpy_fancy_indexing(store):
    from filtershift.store.multislice import take_runs

    ds, w, _ = store
    x = ds["weights"].data
    rng = np.random.default_rng(0)
    cases = [([], []), ([0], [len(w)]), ([CHUNK - 5], [10]), ([3], [1]), ([len(w) - 1], [1]),
             ([0, CHUNK], [CHUNK, CHUNK]), ([100, 50, 100], [10, 10, 10])]       # unsorted, repeated
    cases += [_random_runs(rng, len(w), int(k)) for k in rng.integers(0, 12, 60)]
    for starts, lengths in cases:
        pos = _positions(starts, lengths)
        got = take_runs(x, starts, lengths)
        assert got.shape == (len(pos), 9) and all(c <= CHUNK for c in got.chunks[0])
        np.testing.assert_array_equal(got.compute(), w[pos])
    one_d = da.from_array(np.arange(50), chunks=7)
    np.testing.assert_array_equal(take_runs(one_d, [3, 40], [10, 9]).compute(), np.r_[3:13, 40:49])
    cols = da.from_array(np.arange(60).reshape(3, 20), chunks=(2, 6))
    np.testing.assert_array_equal(take_runs(cols, [1, 11], [8, 4], axis=1).compute(),
                                  np.arange(60).reshape(3, 20)[:, np.r_[1:9, 11:15]])
    with pytest.raises(InputError, match=f"outside the {len(w)} filters"):
        take_runs(x, [len(w) - 10], [20])


def test_whole_blocks_keep_their_chunks(store):
    from filtershift.store.multislice import take_runs

    ds, w, _ = store
    x = ds["weights"].data
    assert take_runs(x, [0], [len(w)]).chunks == x.chunks
    part = take_runs(x, [CHUNK, 5 * CHUNK + 7], [2 * CHUNK, 100])
    assert part.chunks[0] == (CHUNK, CHUNK, 100)


def test_graph_is_one_layer_of_one_task_per_chunk_and_no_task_is_large(store):
    ds, w, pf = store
    base_layers = len(ds["weights"].data.dask.layers)
    for labels in ({"task": "Classification"}, {"model_id": [1, 4, 7]}, {"record": slice(3, 40)}):
        subs = [ds.filtershift.sel(**labels)] + ([] if "record" in labels else [fs.select(ds, **labels)])
        for sub in subs:
            data = sub["weights"].data
            graph = data.__dask_graph__()
            assert len(graph.layers) == base_layers + 1
            assert len(graph.layers[data.name]) == data.numblocks[0]
            assert data.numblocks[0] <= 2 * len(fs.records(sub)) + ds["weights"].data.numblocks[0]
            with _Sizes() as sizes:
                got = data.compute()
            assert sizes.rows <= CHUNK
            keep = np.ones(len(pf), bool)
            for name, wanted in labels.items():
                keep &= (pf[name].between(wanted.start, wanted.stop) if isinstance(wanted, slice)
                         else pf[name].isin(np.atleast_1d(wanted))).to_numpy()
            np.testing.assert_array_equal(got, w[keep])


def test_filtershift_sel_equals_ds_sel(store):
    ds, w, pf = store
    recs = fs.records(ds)
    cases = [{"task": "Detection"}, {"task": ["Classification", "Generative"]}, {"model_id": 3},
             {"model_id": [2, 5, 9]}, {"record": slice(10, 30)}, {"record": recs["n"] > 300},
             {"model_id": fs.models(ds)["model_id"] % 2 == 0}, {"task": "Classification", "conv_depth": [0, 1]},
             {"conv_depth_norm": slice(None, 0.5)}, {"model_id": []}]
    for labels in cases:
        plain, ours = ds.sel(**labels), ds.filtershift.sel(**labels)
        xr.testing.assert_identical(ours.compute(), plain.compute())
        pd.testing.assert_frame_equal(fs.records(ours), fs.records(plain))
        pd.testing.assert_frame_equal(fs.models(ours), fs.models(plain))
        assert ours["weights"].chunks[0] == ours["record"].chunks[0]
    with_id = ds.assign_coords(filter_id=("filter", da.arange(len(w), chunks=CHUNK)))      # a reordered store's
    xr.testing.assert_identical(with_id.filtershift.sel(task="Detection").compute(),
                                with_id.sel(task="Detection").compute())
    loaded = ds.compute()                                                                  # in-memory weights
    xr.testing.assert_identical(loaded.filtershift.sel(model_id=[2, 5]), loaded.sel(model_id=[2, 5]).compute())
    sub = ds.filtershift.sel(task="Detection")
    keep = (pf["task"] == "Detection").to_numpy()
    np.testing.assert_array_equal(sub["weights"].values, w[keep])
    assert fs.records(sub)["record"].tolist() == sorted(set(pf["record"][keep]))
    assert int(fs.records(sub)["n"].sum()) == keep.sum()
    with pytest.raises(InputError, match=r"no label\(s\) \['Nope'\]"):
        ds.filtershift.sel(task="Nope")


def test_filtershift_isel_equals_ds_isel(store):
    ds, w, _ = store
    rng = np.random.default_rng(1)
    mask = rng.random(len(w)) < 0.3
    for key in (slice(100, 9000), slice(5, 15000, 7), np.r_[5:100, 7000:9000, 3, -1], mask,
                np.zeros(0, np.int64), slice(None)):
        plain, ours = ds.isel(filter=key), ds.filtershift.isel(filter=key)
        xr.testing.assert_identical(ours.compute(), plain.compute())
        pd.testing.assert_frame_equal(fs.records(ours), fs.records(plain))
    np.testing.assert_array_equal(ds.filtershift.isel(filter=mask)["weights"].values, w[mask])
    with pytest.raises(InputError, match="out of range"):
        ds.filtershift.isel(filter=[len(w)])
    with pytest.raises(InputError, match="boolean mask over filter needs 30000"):
        ds.filtershift.isel(filter=mask[:10])


def test_concat_and_nested_selections(store):
    ds, w, pf = store
    a = ds.filtershift.sel(task="Detection")
    b = ds.filtershift.sel(model_id=[1, 2])
    both = xr.concat([a, b], dim="filter")
    keep_a = np.flatnonzero((pf["task"] == "Detection").to_numpy())
    keep_b = np.flatnonzero(pf["model_id"].isin([1, 2]).to_numpy())
    pos = np.r_[keep_a, keep_b]
    np.testing.assert_array_equal(both["weights"].values, w[pos])
    np.testing.assert_array_equal(both["record"].values, pf["record"].to_numpy()[pos])
    np.testing.assert_array_equal(both["task"].values, pf["task"].to_numpy()[pos])
    assert int(fs.records(both)["n"].sum()) == len(pos)
    xr.testing.assert_identical(both.compute(), xr.concat([ds.sel(task="Detection"), ds.sel(model_id=[1, 2])],
                                                          dim="filter").compute())
    inner = a.filtershift.isel(filter=slice(50, 3000)).filtershift.sel(model_id=int(pf["model_id"][keep_a[100]]))
    want = keep_a[50:3000][pf["model_id"].to_numpy()[keep_a[50:3000]] == pf["model_id"][keep_a[100]]]
    np.testing.assert_array_equal(inner["weights"].values, w[want])
    np.testing.assert_array_equal(inner["record"].values, pf["record"].to_numpy()[want])


def test_analysis_on_a_selection_equals_ds_sel(store):
    ds, _, _ = store
    ours, plain = ds.filtershift.sel(task=["Classification", "Detection"]), ds.sel(task=["Classification",
                                                                                          "Detection"])
    b1, b2 = fs.fit_basis(ours), fs.fit_basis(plain)
    np.testing.assert_allclose(b1.components_, b2.components_, atol=1e-6)
    np.testing.assert_allclose(b1.mean_, b2.mean_, atol=1e-7)
    d1 = fs.drift(fs.distributions(ours, b1, by="task", bins=20), metric="js")
    d2 = fs.drift(fs.distributions(plain, b2, by="task", bins=20), metric="js")
    xr.testing.assert_allclose(d1, d2)


@pytest.mark.parametrize("chunks", [(100,) * 10, (100,) * 9 + (37,), (7,) * 50, (1000,), (64, 64, 64, 5),
                                    (3, 5, 100, 2, 90), (2048,) * 9 + (1568,)])
def test_predicted_chunks_equal_dasks_take(chunks):
    from filtershift.store.index import take_chunks

    full = sum(chunks)
    dummy = da.empty((full, 9), chunks=(chunks, 9))
    rng = np.random.default_rng(len(chunks))
    for n in (0, 1, 2, 97, full // 3, full - 1, full, full + 5, 2 * full):
        for pos in (np.sort(rng.choice(full, min(n, full), replace=False)), rng.integers(0, full, n),
                    np.arange(n) % full):
            assert take_chunks(chunks, pos) == dummy[pos].chunks[0], (chunks, n)
    with dask.config.set({"array.chunk-size-tolerance": 2.0}):
        pos = np.arange(0, full, 2)
        assert take_chunks(chunks, pos) == dummy[pos].chunks[0]


def test_ds_sel_runs_no_dask_take_to_learn_chunks(store, monkeypatch):
    ds, _, pf = store
    index = ds.xindexes["record"]
    pos = np.flatnonzero((pf["task"] == "Detection").to_numpy())
    want = ds["weights"].data[pos].chunks[0]
    import dask.array.slicing

    def refuse(*args, **kwargs):
        raise AssertionError("dask take called")

    monkeypatch.setattr(dask.array.slicing, "take", refuse)
    new = index.isel({"filter": pos})
    assert new.chunks == want and new.size == len(pos)
