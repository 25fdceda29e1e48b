"""What a pangeo user types first on a store (issue #13), each checked against plain zarr + pandas + numpy.

One small synthetic store of a few chunks serves every case; the weights are read with zarr and the tables with
pandas, independently of filtershift's Dataset. The last test checks that selections build no dask task at all on
a 1e6-filter Dataset with small chunks.
"""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from sources import LABELLED_CHUNK

import filtershift as fs
from filtershift.errors import InputError
from filtershift.store.dataset import from_arrays, groupers

CHUNK = LABELLED_CHUNK


@pytest.fixture(scope="module")
def store(labelled_store):
    """(path, ds, weights, per-filter pandas frame, records) of conftest's 30,000-filter store in 8 chunks."""
    return labelled_store


def test_sel_by_label_follows_tables(store):
    _, ds, w, pf, recs = store
    keep = (pf["task"] == "Classification").to_numpy()
    sub = ds.sel(task="Classification")
    np.testing.assert_array_equal(sub["weights"].values, w[keep])
    assert set(sub["task"].values) == {"Classification"}
    want = sorted(set(pf["record"][keep]))
    assert fs.records(sub)["record"].tolist() == want
    assert int(fs.records(sub)["n"].sum()) == keep.sum()
    assert sorted(fs.models(sub)["model_id"]) == sorted(set(pf["model_id"][keep]))


def test_sel_list_scalar_and_slice(store):
    _, ds, w, pf, recs = store
    keep = pf["model_id"].isin([3, 4]).to_numpy()
    np.testing.assert_array_equal(ds.sel(model_id=[3, 4])["weights"].values, w[keep])
    one = ds.sel(model_id=3)
    assert one.sizes["filter"] == (pf["model_id"] == 3).sum()
    np.testing.assert_array_equal(one["model_id"].values, np.full(one.sizes["filter"], 3))
    rng = ds.sel(record=slice(5, 9))
    np.testing.assert_array_equal(rng["weights"].values, w[pf["record"].between(5, 9).to_numpy()])
    both = ds.sel(task=["Detection", "Generative"], conv_depth=0)
    keep = (pf["task"].isin(["Detection", "Generative"]) & (pf["conv_depth"] == 0)).to_numpy()
    np.testing.assert_array_equal(both["weights"].values, w[keep])
    big = fs.records(ds)["n"] > 200
    chosen = recs["record"][(recs["n"] > 200).to_numpy()]
    np.testing.assert_array_equal(ds.sel(record=big)["weights"].values, w[pf["record"].isin(chosen).to_numpy()])
    shallow = ds.sel(conv_depth_norm=slice(None, 0.5))
    norm = np.repeat(recs["conv_depth_norm"].to_numpy(), recs["n"].to_numpy())
    np.testing.assert_array_equal(shallow["weights"].values, w[norm <= np.float32(0.5)])


def test_unknown_label_names_the_labels(store):
    ds = store[1]
    with pytest.raises(InputError, match=r"no label\(s\) \['Nope'\]; the labels are \['Classification'"):
        ds.sel(task="Nope")


def test_where_compares_labels(store):
    _, ds, w, pf, _ = store
    keep = (pf["task"] == "Classification").to_numpy()
    masked = ds.where(ds.task == "Classification")
    assert isinstance(masked["weights"].data, dask.array.Array)
    assert int(masked["weights"].count()) == keep.sum() * 9 > 0
    np.testing.assert_allclose(masked["weights"].mean("filter").values, w[keep].mean(0), rtol=1e-5)


def test_groupby_labels_lazy(store):
    _, ds, w, pf, _ = store
    res = ds["weights"].groupby(**groupers(ds, "task")).mean()
    assert isinstance(res.data, dask.array.Array)
    want = pd.DataFrame(w).groupby(pf["task"].to_numpy()).mean()
    assert list(res["task"].values) == list(want.index)
    np.testing.assert_allclose(res.transpose("task", "k").values, want.to_numpy(), rtol=1e-5)
    res2 = ds["weights"].groupby(**groupers(ds, "task", "conv_depth")).sum()
    want2 = pd.DataFrame(w).groupby([pf["task"].to_numpy(), pf["conv_depth"].to_numpy()]).sum()
    got2 = res2.transpose("task", "conv_depth", "k")
    for (task, depth), row in want2.iterrows():
        np.testing.assert_allclose(got2.sel(task=task, conv_depth=depth).values, row.to_numpy(), rtol=1e-5)


def test_select_then_records_is_the_subset(store):
    _, ds, w, pf, _ = store
    sub = fs.select(ds, task="Detection")
    keep = (pf["task"] == "Detection").to_numpy()
    np.testing.assert_array_equal(sub["weights"].values, w[keep])
    assert fs.records(sub)["record"].tolist() == sorted(set(pf["record"][keep]))
    np.testing.assert_array_equal(sub["record"].values, pf["record"][keep].to_numpy())


def test_isel_cuts_records_and_concat_joins(store):
    _, ds, w, pf, recs = store
    a, b = ds.isel(filter=slice(100, 5000)), ds.isel(filter=slice(20_000, 20_500))
    rec_a = fs.records(a)
    assert int(rec_a["n"].sum()) == 4900 and rec_a["start"].iloc[0] == 0
    assert rec_a["record"].tolist() == sorted(set(pf["record"][100:5000]))
    both = xr.concat([a, b], dim="filter")
    pos = np.r_[100:5000, 20_000:20_500]
    np.testing.assert_array_equal(both["weights"].values, w[pos])
    np.testing.assert_array_equal(both["record"].values, pf["record"].to_numpy()[pos])
    np.testing.assert_array_equal(both["task"].values, pf["task"].to_numpy()[pos])
    assert int(fs.records(both)["n"].sum()) == len(pos)
    assert both["weights"].chunks[0] == both["record"].chunks[0]
    picked = ds.isel(filter=np.array([5, 6, 7, 29_999, 0]))
    np.testing.assert_array_equal(picked["model_id"].values, pf["model_id"].to_numpy()[[5, 6, 7, 29_999, 0]])
    mask = np.zeros(len(w), bool)
    mask[[3, 4, 9000, 29_998]] = True
    masked = ds.isel(filter=mask)
    np.testing.assert_array_equal(masked["record"].values, pf["record"].to_numpy()[mask])
    assert masked["weights"].chunks[0] == masked["record"].chunks[0]


@pytest.mark.parametrize("fmt", ["zarr", "netcdf"])
def test_subset_round_trips_to_files(store, tmp_path, fmt):
    _, ds, w, pf, _ = store
    sub = ds.isel(filter=slice(0, 1000))
    target = tmp_path / ("out.zarr" if fmt == "zarr" else "out.nc")
    with warnings.catch_warnings():
        warnings.simplefilter("error", xr.SerializationWarning)
        if fmt == "zarr":
            sub.to_zarr(target, consolidated=False)
            back = xr.open_zarr(target, consolidated=False)
        else:
            sub.to_netcdf(target, engine="h5netcdf")
            back = xr.open_dataset(target, engine="h5netcdf")
    np.testing.assert_array_equal(back["weights"].values, w[:1000])
    assert back["task"].values.tolist() == pf["task"].to_numpy()[:1000].tolist()
    np.testing.assert_array_equal(back["model_id"].values, pf["model_id"].to_numpy()[:1000])
    assert back["task"].attrs["column"] == "Task"
    assert all(isinstance(v, (str, int, np.integer)) for v in back.attrs.values())


class _Count(Callback):
    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _pretask(self, key, dsk, state):
        self.tasks += 1


def test_selections_compute_nothing():
    """sel/isel/where/select on a 1e6-filter Dataset in 1,000 chunks run no dask task (nothing of size N)."""
    n, per = 1_000_000, 250
    recs = pd.DataFrame({"model_id": np.arange(n // per) // 20, "conv_depth": np.arange(n // per) % 20,
                         "n": np.full(n // per, per)})
    mods = pd.DataFrame({"model_id": np.arange(recs["model_id"].max() + 1),
                         "Task": np.where(np.arange(recs["model_id"].max() + 1) % 3, "Detection", "Classification")})
    weights = dask.array.zeros((n, 9), chunks=(1000, 9), dtype=np.float32)
    with _Count() as count:
        ds = from_arrays(weights, recs, mods)
        ds.sel(task="Classification")
        ds.sel(model_id=[3, 4])
        ds.sel(record=slice(10, 2000))
        ds.isel(filter=slice(1234, 500_000))
        ds.where(ds.task == "Classification")
        sub = fs.select(ds, task="Detection", conv_depth=[0, 1])
        fs.records(sub), fs.models(sub)
        xr.concat([ds.isel(filter=slice(0, 10)), ds.isel(filter=slice(-10, None))], dim="filter")
    assert count.tasks == 0
    assert ds["task"].data.numblocks == (1000,)


# -- the ds.filtershift accessor, lazy results, attrs (issue #13, second half) -------------------------------------


def _pca_reference(w):
    """Plain numpy PCA of the scaled filters: mean, components (sign: largest |entry| positive), variance."""
    w = np.asarray(w, np.float64)
    m = np.abs(w).max(1, keepdims=True)
    s = np.divide(w, m, out=np.zeros_like(w), where=m > 0)
    vals, vecs = np.linalg.eigh(np.cov(s, rowvar=False))
    order = np.argsort(vals)[::-1]
    comps = vecs[:, order].T
    comps *= np.sign(comps[np.arange(9), np.argmax(np.abs(comps), 1)])[:, None]
    return s.mean(0), comps, vals[order]


def test_accessor_tables_follow_the_selection(store):
    _, ds, w, pf, recs = store
    sub = ds.sel(task="Detection")
    keep = (pf["task"] == "Detection").to_numpy()
    assert sub.filtershift.records["record"].tolist() == sorted(set(pf["record"][keep]))
    assert int(sub.filtershift.records["n"].sum()) == keep.sum()
    assert sorted(sub.filtershift.models["model_id"]) == sorted(set(pf["model_id"][keep]))
    assert sub["weights"].filtershift.models["model_id"].tolist() == sub.filtershift.models["model_id"].tolist()
    pd.testing.assert_frame_equal(ds.filtershift.records, recs[fs.records(ds).columns], check_dtype=False)


def test_accessor_groupby_is_lazy_with_labels(store):
    _, ds, w, pf, _ = store
    with pytest.raises(ValueError, match="Please pass `labels` to UniqueGrouper when grouping by a chunked array"):
        ds["weights"].groupby("task").mean()         # plain xarray: what README documents
    with _Count() as count:
        grouped = ds.filtershift.groupby("task").mean()
    assert count.tasks == 0 and isinstance(grouped["weights"].data, dask.array.Array)
    want = pd.DataFrame(w).groupby(pf["task"].to_numpy()).mean()
    assert list(grouped["task"].values) == list(want.index)
    np.testing.assert_allclose(grouped["weights"].transpose("task", "k").values, want.to_numpy(), rtol=1e-5)
    two = ds["weights"].filtershift.groupby("task", "conv_depth").count()
    want2 = pd.Series(1, index=pf.index).groupby([pf["task"], pf["conv_depth"]]).sum()
    got2 = two.isel(k=0).to_series()
    got2 = got2[got2 > 0]
    assert got2.to_dict() == want2.to_dict()
    sub = ds.sel(task="Detection").filtershift.groupby("Visual Category").sum()     # a column name works too
    assert set(sub["visual_category"].values) <= set(ds["visual_category"].attrs["labels"])


def test_accessor_analysis_equals_the_functions(store):
    _, ds, w, pf, _ = store
    basis = ds.filtershift.basis()
    mean, comps, var = _pca_reference(w)
    np.testing.assert_allclose(basis.mean_, mean, atol=1e-6)
    np.testing.assert_allclose(basis.components_, comps, atol=1e-5)
    np.testing.assert_allclose(basis.explained_variance_, var, rtol=1e-5)
    matrix = ds.filtershift.drift(by="task", bins=30, metric="js")
    plain = fs.drift(fs.distributions(ds, fs.fit_basis(ds), by="task", bins=30), metric="js")
    xr.testing.assert_allclose(matrix, plain)
    assert ds.filtershift.stats.passes == 3                   # basis and drift shared pass 1
    q = ds.filtershift.quality(orthogonality=False)
    pd.testing.assert_frame_equal(q, fs.layer_quality(ds, orthogonality=False))
    assert int(q["n"].sum()) == len(w)
    dist = ds.filtershift.distributions(by="conv_depth", bins=30)
    np.testing.assert_array_equal(dist["n_filters"].values, pf.groupby("conv_depth").size().to_numpy())


def test_transform_is_lazy_and_keeps_the_coords(store):
    _, ds, w, pf, _ = store
    basis = fs.fit_basis(w)
    mean, comps, _ = _pca_reference(w)
    sub = ds.sel(task="Classification")
    keep = (pf["task"] == "Classification").to_numpy()
    with _Count() as count:
        coef = basis.transform(sub)
        from_array = basis.transform(sub["weights"])
    assert count.tasks == 0
    assert isinstance(coef.data, dask.array.Array) and coef.dims == ("filter", "component")
    assert coef.chunks[0] == sub["weights"].chunks[0]
    x = w[keep].astype(np.float64)
    m = np.abs(x).max(1, keepdims=True)
    np.testing.assert_allclose(coef.values, (np.divide(x, m, out=np.zeros_like(x), where=m > 0) - mean) @ comps.T,
                               atol=1e-5)
    xr.testing.assert_identical(coef, from_array)
    np.testing.assert_array_equal(coef["model_id"].values, pf["model_id"].to_numpy()[keep])
    assert fs.records(coef)["record"].tolist() == sorted(set(pf["record"][keep]))
    assert coef.attrs["units"] == "coefficient units" and coef.attrs["long_name"]
    assert isinstance(basis.transform(w[:50]), np.ndarray)          # in-memory arrays stay in memory


def test_fit_basis_in_memory_and_masked(store):
    _, ds, w, pf, _ = store
    loaded = ds.isel(filter=slice(1000, 9000)).load()
    assert not isinstance(loaded["weights"].data, dask.array.Array)
    mean, comps, var = _pca_reference(w[1000:9000])
    got = fs.fit_basis(loaded)
    np.testing.assert_allclose(got.components_, comps, atol=1e-5)
    np.testing.assert_allclose(got.explained_variance_, var, rtol=1e-5)
    np.testing.assert_allclose(ds.isel(filter=slice(1000, 9000)).load().filtershift.basis().mean_, mean, atol=1e-6)
    with pytest.raises(InputError, match=r"NaN.*ds\.sel\(\.\.\.\).*drop=True"):
        fs.fit_basis(ds.where(ds.task == "Classification"))
    keep = (pf["task"] == "Classification").to_numpy()
    dropped = ds.where((ds.task == "Classification").compute(), drop=True)
    np.testing.assert_allclose(fs.fit_basis(dropped).components_, _pca_reference(w[keep])[1], atol=1e-5)


def test_results_carry_long_name_units_description(store):
    _, ds, w, _, _ = store
    basis = fs.fit_basis(ds)
    dist = fs.distributions(ds, basis, by="task", bins=20, fine_bins=40)
    units = {"kl_sym": "nats", "js": "nats", "w1": "coefficient units"}
    results = [dist, basis.to_dataset(), basis.eigenimages, fs.group_bases(basis, by="task"),
               fs.drift_ci(dist, metric="w1", n_boot=5), fs.kde(dist, points=16),
               fs.quality_by(fs.layer_quality(basis.stats_, orthogonality=False), "task"),
               basis.stats_.moments(), basis.stats_.range_sparsity(), basis.stats_.histograms(bins=20, fine_bins=40)]
    for metric, unit in units.items():
        d = fs.drift(dist, metric=metric)
        assert d.attrs["units"] == unit
        results.append(d)
    for r in results:
        parts = [r, *r.data_vars.values()] if isinstance(r, xr.Dataset) else [r]
        for part in parts:
            missing = {"long_name", "units", "description"} - set(part.attrs)
            assert not missing, (getattr(part, "name", None), missing)
    assert dist["explained_variance"].attrs["units"] == "coefficient units squared"
    assert dist["p"].attrs["units"] == "1"


def test_no_stale_filter_count_in_attrs(store):
    _, ds, _, pf, _ = store
    assert "n_filters" not in ds.attrs
    for sub in (ds.sel(task="Detection"), ds.isel(filter=slice(0, 10)), fs.select(ds, task="Detection")):
        assert "n_filters" not in sub.attrs
    assert fs.select(ds, task="Detection").sizes["filter"] == (pf["task"] == "Detection").sum()
