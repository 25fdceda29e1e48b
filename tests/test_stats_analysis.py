"""End to end on synthesized data: basis, distributions, drift and intervals equal an in-memory numpy
implementation of the definitions written here; planted shifts come out in order; degenerate groups are clear."""

import dask
import numpy as np
import pandas as pd
import pytest

from filtershift.errors import InputError
from filtershift.stats import density2d, distributions, drift, drift_ci, fit_basis, group_bases, kde, record_stats
from filtershift.store.dataset import from_arrays, select

TASKS = ["Classification", "Detection", "Segmentation"]
SHIFT = {"Classification": 0.0, "Detection": 0.4, "Segmentation": 1.2}   # planted: drift grows in this order


def make(seed=0, n_models=18, solo=True):
    """Models of three tasks and two categories; the task adds a constant-kernel component of planted size."""
    rng = np.random.default_rng(seed)
    recs, mods, blocks = [], [], []
    const = np.ones(9) / 3
    for m in range(n_models):
        task = TASKS[m % 3]
        mods.append({"model_id": 100 + m, "Task": task, "Visual Category": ["natural", "medical"][(m // 3) % 2],
                     "Name": f"net{m}"})
        nd = int(rng.integers(2, 7))
        for d in range(nd):
            n = int(rng.integers(80, 900))
            x = rng.standard_normal((n, 9)) * 0.1 * np.exp(-d / 4)
            x += SHIFT[task] * 0.1 * rng.standard_normal((n, 1)) * const
            if m == 0 and d == 0:
                x[:5] = 0.0
            blocks.append(x)
            recs.append({"model_id": 100 + m, "conv_depth": d, "conv_depth_norm": d / (nd - 1), "n": n})
    if solo:  # a one-filter model with its own task
        mods.append({"model_id": 999, "Task": "Solo", "Visual Category": "natural", "Name": "solo"})
        blocks.append(rng.standard_normal((1, 9)) * 0.1)
        recs.append({"model_id": 999, "conv_depth": 0, "conv_depth_norm": 0.0, "n": 1})
    w = np.concatenate(blocks).astype(np.float32)
    return w, pd.DataFrame(recs), pd.DataFrame(mods)


# -- the independent in-memory reference ------------------------------------------------------------------------


def ref_scale(w):
    x = w.astype(np.float64)
    m = np.abs(x).max(1, keepdims=True)
    return np.divide(x, m, out=np.zeros_like(x), where=m > 0)


def ref_pca(w):
    x = ref_scale(w)
    mean = x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(x.T, ddof=1))
    order = np.argsort(vals)[::-1]
    vals, comps = vals[order], vecs[:, order].T
    comps *= np.sign(comps[np.arange(9), np.argmax(np.abs(comps), 1)])[:, None]
    return mean, comps, vals, vals / vals.sum()


def ref_hist(c, lo, hi, bins=70):
    d = np.histogram(c, bins=bins, range=(lo, hi), density=True)[0]
    d[d == 0] = np.finfo(np.float32).eps
    return d / d.sum()


def ref_kl(p, q):
    return np.sum(p * np.log(p / q))


def ref_drift(w, labels, groups, bins=70):
    mean, comps, _, ratio = ref_pca(w)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    hists = {g: [ref_hist(coef[labels == g, k], lo, hi, bins) for k in range(9)] for g in groups}
    out = np.zeros((len(groups), len(groups)))
    for i, a in enumerate(groups):
        for j, b in enumerate(groups):
            out[i, j] = sum(ratio[k] * (ref_kl(hists[a][k], hists[b][k]) + ref_kl(hists[b][k], hists[a][k]))
                            for k in range(9))
    return out


def per_filter(recs, mods, column):
    lab = recs["model_id"].map(mods.set_index("model_id")[column])
    return np.repeat(lab.to_numpy(), recs["n"].to_numpy())


@pytest.fixture(scope="module")
def data():
    w, recs, mods = make()
    ds = from_arrays(w, recs, mods, chunk_filters=1500)
    with dask.config.set(scheduler="threads"):
        basis = fit_basis(ds)
    return w, recs, mods, ds, basis


# -- tests -------------------------------------------------------------------------------------------------------


def test_basis_equals_numpy(data):
    w, _, _, ds, basis = data
    mean, comps, ev, ratio = ref_pca(w)
    np.testing.assert_allclose(basis.mean_, mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(basis.explained_variance_, ev, rtol=1e-6)
    np.testing.assert_allclose(basis.explained_variance_ratio_, ratio, rtol=1e-6)
    np.testing.assert_allclose(basis.components_, comps, atol=1e-6)
    assert basis.n_samples_ == len(w)
    np.testing.assert_allclose(basis.eigenimages.sel(component=2).values, comps[2].reshape(3, 3), atol=1e-6)
    np.testing.assert_allclose(basis.transform(w[:50]), (ref_scale(w[:50]) - mean) @ comps.T, atol=1e-6)
    assert set(basis.to_dataset().data_vars) >= {"mean", "components", "eigenimages", "explained_variance_ratio"}
    in_memory = fit_basis(w)
    np.testing.assert_allclose(in_memory.explained_variance_, ev, rtol=1e-6)


def test_drift_equals_numpy_and_three_passes(data):
    w, recs, mods, ds, basis = data
    with dask.config.set(scheduler="threads"):
        dist = distributions(ds, basis, by="Task", bins=70)
        dist_cat = distributions(ds, basis, by="visual_category")
        dist_depth = distributions(ds, basis, by="depth")
        dist_both = distributions(ds, basis, by=["task", "Visual Category"])
        group_bases(basis, by="task")
    assert basis.stats_.passes == 3   # moments, range, histograms: once for every grouping
    groups = list(dist["group"].values)
    assert groups == sorted(set(mods["Task"]))
    d = drift(dist)
    ref = ref_drift(w, per_filter(recs, mods, "Task"), groups)
    np.testing.assert_allclose(d.values, ref, rtol=1e-6, atol=1e-12)
    cats = list(dist_cat["group"].values)
    np.testing.assert_allclose(drift(dist_cat).values,
                               ref_drift(w, per_filter(recs, mods, "Visual Category"), cats), rtol=1e-6)
    # depth deciles: pandas.cut of the float64 depth, as the reference analysis does
    deciles = pd.cut(np.repeat(recs["conv_depth_norm"].to_numpy(np.float64), recs["n"]), np.arange(0, 1.1, 0.1),
                     include_lowest=True)
    labels = np.array([f"[{i.left:.1f}, {i.right:.1f}]" if i.left < 0 else f"({i.left:.1f}, {i.right:.1f}]"
                       for i in deciles])
    labels[labels == "[-0.0, 0.1]"] = "[0.0, 0.1]"
    present = [g for g in dist_depth["group"].values]
    assert set(present) == set(labels)
    np.testing.assert_allclose(drift(dist_depth).values, ref_drift(w, labels, present), rtol=1e-6)
    # a combination of columns
    combo = np.char.add(np.char.add(per_filter(recs, mods, "Task").astype(str), " / "),
                        per_filter(recs, mods, "Visual Category").astype(str))
    both = list(dist_both["group"].values)
    assert set(both) == set(combo)
    np.testing.assert_allclose(drift(dist_both).values, ref_drift(w, combo, both), rtol=1e-6)
    # sizes beside the matrix
    n_ref = pd.Series(per_filter(recs, mods, "Task")).value_counts()
    assert d["n_filters_a"].values.tolist() == [n_ref[g] for g in groups]
    assert d["n_models_a"].values.tolist() == [int((mods["Task"] == g).sum()) for g in groups]


def test_other_metrics_equal_numpy(data):
    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task")
    mean, comps, _, ratio = ref_pca(w)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    lab = per_filter(recs, mods, "Task")
    groups = list(dist["group"].values)
    widths = np.diff(np.linspace(lo, hi, 71))
    p = {g: [ref_hist(coef[lab == g, k], lo, hi) for k in range(9)] for g in groups}
    c = {g: [np.histogram(coef[lab == g, k], 70, (lo, hi))[0] / (lab == g).sum() for k in range(9)] for g in groups}
    js = np.zeros((4, 4))
    w1 = np.zeros((4, 4))
    for i, a in enumerate(groups):
        for j, b in enumerate(groups):
            for k in range(9):
                m = (p[a][k] + p[b][k]) / 2
                js[i, j] += ratio[k] * 0.5 * (ref_kl(p[a][k], m) + ref_kl(p[b][k], m))
                w1[i, j] += ratio[k] * np.sum(np.abs(np.cumsum(c[a][k]) - np.cumsum(c[b][k])) * widths)
    np.testing.assert_allclose(drift(dist, "js").values, js, rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(drift(dist, "w1").values, w1, rtol=1e-6, atol=1e-15)


def test_planted_shift_order(data):
    _, _, _, ds, basis = data
    d = drift(distributions(ds, basis, by="task"))
    ref = d.sel(group_a="Classification")
    assert 0 < ref.sel(group_b="Detection") < ref.sel(group_b="Segmentation")
    for metric in ("js", "w1"):
        r = drift(distributions(ds, basis, by="task"), metric).sel(group_a="Classification")
        assert r.sel(group_b="Detection") < r.sel(group_b="Segmentation")


def test_single_filter_and_empty_groups(data):
    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task", min_filters=10)
    solo = dist.sel(group="Solo")
    assert int(solo["n_filters"]) == 1 and int(solo["n_models"]) == 1 and bool(solo["small"])
    assert np.all(dist["counts"].sel(group="Solo").sum("bin") == 1)
    assert np.isfinite(drift(dist).sel(group_a="Solo")).all()
    gb = group_bases(basis, by="task")
    assert not bool(gb["valid"].sel(group="Solo")) and np.isnan(gb["components"].sel(group="Solo")).all()
    assert bool(gb["valid"].sel(group="Detection"))
    # a per-group basis equals the PCA of that group's filters
    lab = per_filter(recs, mods, "Task")
    _, comps, ev, _ = ref_pca(w[lab == "Detection"])
    np.testing.assert_allclose(gb["explained_variance"].sel(group="Detection"), ev, rtol=1e-6)
    np.testing.assert_allclose(gb["components"].sel(group="Detection"), comps, atol=1e-6)
    # empty groups: a selection keeps the vocabulary; kept empty groups give NaN drift, zero sizes
    sub = select(ds, task="Detection")
    d_sub = distributions(sub, by="task", keep_empty=True)
    assert d_sub["n_filters"].sel(group="Classification") == 0
    m = drift(d_sub)
    assert np.isnan(m.sel(group_a="Classification")).all() and m.sel(group_a="Detection",
                                                                    group_b="Detection") == 0
    assert list(distributions(sub, by="task")["group"].values) == ["Detection"]
    with pytest.raises(InputError, match="unknown grouping"):
        distributions(sub, by="no such column")


def test_selection_equals_numpy_on_subset(data):
    w, recs, mods, ds, basis = data
    sub = select(ds, visual_category="medical")
    keep = per_filter(recs, mods, "Visual Category") == "medical"
    b = fit_basis(sub)
    np.testing.assert_allclose(b.explained_variance_, ref_pca(w[keep])[2], rtol=1e-6)
    dist = distributions(sub, b, by="task")
    lab = per_filter(recs, mods, "Task")[keep]
    np.testing.assert_allclose(drift(dist).values, ref_drift(w[keep], lab, list(dist["group"].values)),
                               rtol=1e-6)


def test_per_record_meta_from_tables_equals_per_filter_reduction(data):
    """Pass 1 takes the meta of each record from the record index's tables; without the index (plain
    coordinates) the same coordinates go through the per-filter reduction and give the same per-record values.
    A coordinate replaced by other values (no index) is honoured, not shadowed by the tables."""
    import xarray as xr

    w, recs, mods, ds, basis = data
    sub = select(ds, visual_category="medical")
    plain = sub.drop_indexes(list(sub.xindexes))
    fast = record_stats(sub)
    slow = record_stats(plain)
    xr.testing.assert_identical(fast.moments().drop_attrs(), slow.moments().drop_attrs())
    assert fast.moments()["task"].dtype == slow.moments()["task"].dtype
    # a user's own per-filter labels under a table name: one group "all" holding every filter
    mine = ds.drop_indexes(list(ds.xindexes))
    mine = mine.assign_coords(task=xr.Variable("filter", (mine["record"].data * 0).astype(np.int32),
                                               {"labels": ["all"], "column": "Task"}))
    dist = distributions(mine, basis, by="task")
    assert list(dist["group"].values) == ["all"] and int(dist["n_filters"].sum()) == len(w)


def test_bootstrap_intervals(data):
    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task")
    ci = drift_ci(dist, n_boot=60, seed=1)
    again = drift_ci(dist, n_boot=60, seed=1)
    np.testing.assert_array_equal(ci["lower"].values, again["lower"].values)
    has = np.isfinite(ci["lower"].values)
    assert has.any() and np.all(ci["lower"].values[has] <= ci["upper"].values[has])
    # each model's histograms are its records' histograms: the member counts add up to the group counts
    for g in range(dist.sizes["group"]):
        members = dist["member_counts"].values[dist["member_group"].values == g]
        np.testing.assert_array_equal(members.sum(0), dist["counts"].values[g])
    # a group of one model cannot be resampled: its pairs have no interval at all
    per_model = drift_ci(distributions(ds, basis, by="model"), n_boot=20)
    for part in ("lower", "upper", "std"):
        assert np.isnan(per_model[part].values).all()
    pair = ci.sel(group_a="Classification", group_b="Segmentation")
    assert float(pair["lower"]) < float(pair["upper"])


def test_basic_interval_reflects_the_percentile_interval_around_the_estimate(data):
    """The default (basic) interval is [2d - q_hi, 2d - q_lo] clipped at 0, from the same replicates as the
    percentile interval; pairs with a one-model group have none, the others have one."""
    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task")
    basic = drift_ci(dist, n_boot=80, seed=4)
    pct = drift_ci(dist, n_boot=80, seed=4, method="percentile")
    d = basic["drift"].values
    n_models = np.bincount(dist["member_group"].values, minlength=dist.sizes["group"])
    alone = (n_models == 1)[:, None] | (n_models == 1)[None, :]
    assert np.isnan(basic["lower"].values[alone]).all() and np.isfinite(basic["lower"].values[~alone]).all()
    np.testing.assert_allclose(basic["lower"].values[~alone], np.maximum(2 * d - pct["upper"].values, 0)[~alone],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(basic["upper"].values[~alone], np.maximum(2 * d - pct["lower"].values, 0)[~alone],
                               rtol=1e-12, atol=1e-15)
    assert basic.attrs["method"].startswith("basic") and pct.attrs["method"].startswith("percentile")
    off = ~alone & ~np.eye(len(d), dtype=bool)
    # the upward bias of a finite-sample divergence: the replicates' median sits above the estimate
    assert (pct["lower"].values[off] + pct["upper"].values[off] > 2 * d[off]).mean() > 0.5
    with pytest.raises(InputError, match="unknown interval method 'bca'"):
        drift_ci(dist, method="bca")


def test_kde_and_density2d(data):
    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task", fine_bins=400)
    k = kde(dist.sel(group=["Classification", "Detection"]), points=200)
    x = k["x"].values
    # the KDE of binned data, computed directly here
    fc = dist["fine_counts"].sel(group="Detection", component=1).values
    edges = dist["fine_edges"].values
    centres = (edges[:-1] + edges[1:]) / 2
    h = float(k["bandwidth"].sel(group="Detection", component=1))
    ref = np.array([np.sum(fc * np.exp(-0.5 * ((xi - centres) / h) ** 2)) for xi in x]) / (fc.sum() * h
                                                                                          * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(k.sel(group="Detection", component=1).values, ref, rtol=1e-9, atol=1e-12)
    # Silverman's rule as the notebook's KDEpy computes it, with the exact coefficient std
    lab = per_filter(recs, mods, "Task")
    mean, comps, _, _ = ref_pca(w)
    c = ((ref_scale(w) - mean) @ comps.T)[lab == "Detection", 1]
    assert abs(h - notebook_bandwidth(c)) / notebook_bandwidth(c) < 0.02
    d2 = density2d(ds, basis, bins=32)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = d2.attrs["range"]
    coef = np.clip(coef, lo, hi)   # the range is these values' min and max, up to rounding of the last bit
    ref2 = np.histogram2d(coef[:, 0], coef[:, 1], bins=32, range=[(lo, hi), (lo, hi)])[0]
    np.testing.assert_array_equal(d2.values, ref2)


def notebook_bandwidth(c):
    """KDEpy's ``bw="silverman"`` (the CNN-Filter-DB notebook's ridge plots), written out here."""
    iqr = np.subtract(*np.percentile(c, [75, 25])) / 1.3489795003921634
    return min(c.std(ddof=1), iqr) * (len(c) * 3 / 4.0) ** (-1 / 5)


#: (fine bins, tolerance): the binned KDE against scipy on the coefficients, as the largest difference over the
#: direct curve's peak (docs/report.md). 256 is the report's ``figures.ridge_bins``; here the bin width is at most
#: 0.3 (256) and 0.08 (1000) of the bandwidth, and the largest differences were 0.29% and 0.08%.
KDE_TOLERANCE = [(256, 0.005), (1000, 0.002)]


@pytest.mark.parametrize(("fine_bins", "rtol"), KDE_TOLERANCE)
def test_binned_kde_equals_scipy_on_the_coefficients(data, fine_bins, rtol):
    """The ridge plots' KDE from fine bins equals scipy's gaussian_kde on the coefficients themselves (computed
    here with numpy from the weights and the basis), within ``rtol`` of the curve's peak, for every group and
    component; where std <= IQR / 1.349, scipy's own bw_method="silverman" is the notebook's bandwidth."""
    from scipy.stats import gaussian_kde

    w, recs, mods, ds, basis = data
    dist = distributions(ds, basis, by="task", fine_bins=fine_bins)
    width = float(np.diff(dist["fine_edges"].values).max())
    k = kde(dist, points=300)
    x = k["x"].values
    lab = per_filter(recs, mods, "Task")
    coef = (ref_scale(w) - basis.mean_) @ basis.components_.T
    plain = 0
    for g in ["Classification", "Detection", "Segmentation"]:
        for j in range(9):
            c = coef[lab == g, j]
            h = notebook_bandwidth(c)
            assert float(k["bandwidth"].sel(group=g, component=j)) == pytest.approx(h, rel=0.005)
            assert width <= 0.3 * h
            if c.std(ddof=1) <= np.subtract(*np.percentile(c, [75, 25])) / 1.3489795003921634:
                ref = gaussian_kde(c, bw_method="silverman")
                plain += 1
            else:
                ref = gaussian_kde(c, bw_method=h / c.std(ddof=1))
            assert ref.factor * c.std(ddof=1) == pytest.approx(h, rel=1e-12)
            want = ref(x)
            got = k.sel(group=g, component=j).values
            assert np.max(np.abs(got - want)) <= rtol * want.max(), (g, j)
    assert plain, "some curves are compared with scipy's bw_method='silverman' itself"


def test_quality_hooks(data):
    w, recs, mods, ds, basis = data
    stats = basis.stats_
    sp = stats.sparsity(0.01)
    mo = stats.moments()
    starts = np.concatenate([[0], np.cumsum(recs["n"])])
    for r in (0, 5):
        raw = w[starts[r]:starts[r + 1]].astype(np.float64)
        amax = np.abs(raw).max()
        sparse = np.all(np.abs(raw) < 0.01 * amax, axis=1)
        assert int(sp["sparse_count"][r]) == sparse.sum()
        np.testing.assert_allclose(sp["nonsparse_sum"][r], raw[~sparse].sum(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(mo["raw_l2_sum"][r], np.linalg.norm(raw, axis=1).sum(), rtol=1e-12)
    assert int(sp["sparse_count"][0]) >= 5


def test_same_numbers_on_two_process_cluster(data):
    from distributed import Client, LocalCluster

    w, recs, mods, ds, basis = data
    expect = drift(distributions(ds, basis, by="task")).values
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        stats = record_stats(ds)
        b = fit_basis(stats)
        got = drift(distributions(stats, b, by="task")).values
        assert stats.passes == 3
    np.testing.assert_allclose(b.explained_variance_, basis.explained_variance_, rtol=1e-12)
    np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_errors_are_clear(data):
    _, _, _, ds, basis = data
    dist = distributions(ds, basis, by="task")
    with pytest.raises(InputError, match="metric"):
        drift(dist, "kl")
    with pytest.raises(InputError, match="bins"):
        distributions(ds, basis, by="task", bins=0)
    with pytest.raises(InputError, match="n_components"):
        fit_basis(ds, n_components=12)
    with pytest.raises(InputError, match="at least 2"):
        fit_basis(np.ones((1, 9), np.float32))


def test_a_million_synthesized_filters_equal_numpy(tmp_path):
    """The acceptance scale: 1e6 filters synthesized as a CNN-Filter-DB `dataset.h5`, converted, analysed out of
    core; the reference reads the same file with h5py and pandas and applies the definitions in numpy."""
    import warnings

    import h5py

    from filtershift.store.convert import convert
    from filtershift.store.dataset import open_store
    from filtershift.synth import synthesize

    src = synthesize(tmp_path / "dataset.h5", n_filters=1_000_000, n_models=40, seed=11)
    ds = open_store(convert(src, tmp_path / "db.zarr", chunk_filters=65_536))
    with dask.config.set(scheduler="threads"):
        basis = fit_basis(ds)
        dist = distributions(ds, basis, by="task", min_filters=1)
        got = drift(dist)
    with h5py.File(src, "r") as h:
        w = h["filters"][:].reshape(-1, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = pd.read_hdf(src, "meta").reset_index()
    task = meta["Task"].astype(str).where(~meta["Task"].astype(str).str.contains("Segmentation"), "Segmentation")
    labels = np.empty(len(w), dtype=object)
    for t, ids in zip(task, meta["filter_ids"]):
        a, b = (int(x) for x in ids.split(":"))
        labels[a:b + 1] = t
    assert len(w) == 1_000_000 and not any(v is None for v in labels)
    mean, comps, var, ratio = ref_pca(w)
    np.testing.assert_allclose(basis.explained_variance_, var, rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(basis.components_ * comps, axis=1)), 1.0, atol=1e-6)
    groups = list(dist["group"].values)
    assert groups == sorted(set(labels)) and len(groups) >= 3
    np.testing.assert_allclose(got.values, ref_drift(w, labels, groups), rtol=1e-6, atol=1e-12)
