"""basis= and range= of an analysis of a selection (filtershift.stats.scope): the whole store's (default, as the
CNN-Filter-DB notebook) or the selection's own, each equal to plain numpy on the filters it names."""

import json

import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats.scope import store_stats
from filtershift.store.dataset import from_arrays

BINS = 12
WHERE = 'task == "A"'


def _data():
    """Six models of two tasks, three layers each; task B's filters are stretched along k = 4 and shifted, so the
    store's basis and range differ clearly from task A's."""
    rng = np.random.default_rng(7)
    w, recs, mods = [], [], []
    for m in range(6):
        task = "A" if m % 2 == 0 else "B"
        mods.append({"model_id": m, "Task": task, "Name": f"m{m}"})
        for depth in range(3):
            n = 400 + 150 * depth + 37 * m
            x = rng.standard_normal((n, 9)) * np.linspace(1.0, 2.0, 9)
            if task == "B":
                x[:, 4] = 4 * x[:, 4] + 2.0
            w.append(x.astype(np.float32))
            recs.append({"model_id": m, "conv_depth": depth, "n": n})
    w = np.concatenate(w)
    recs = pd.DataFrame(recs)
    return w, recs, pd.DataFrame(mods)


@pytest.fixture(scope="module")
def data():
    w, recs, mods = _data()
    ds = from_arrays(w, recs, mods, chunk_filters=1500)
    model = np.repeat(recs["model_id"].to_numpy(), recs["n"].to_numpy())
    task = np.where(model % 2 == 0, "A", "B")
    return ds, w.astype(np.float64), model, task


def _numpy_basis(w):
    """PCA of the scaled filters, as the notebook: divide by max |w|, centre, covariance ddof=1, eigenvectors by
    decreasing eigenvalue, the largest |entry| of each made positive."""
    peak = np.abs(w).max(1, keepdims=True)
    s = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)
    mean = s.mean(0)
    val, vec = np.linalg.eigh(np.cov(s, rowvar=False))
    vec = vec[:, ::-1].T
    vec *= np.sign(vec[np.arange(9), np.abs(vec).argmax(1)])[:, None]
    return mean, vec, val[::-1]


def _coef(w, basis):
    peak = np.abs(w).max(1, keepdims=True)
    s = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)
    return (s - basis[0]) @ basis[1].T


def _counts(coef, groups, lo, hi):
    """{group: (component, bin) counts} with np.histogram over [lo, hi]."""
    return {g: np.array([np.histogram(coef[groups == g, j], BINS, (lo, hi))[0] for j in range(9)])
            for g in np.unique(groups)}


def _check(dist, want, lo, hi):
    np.testing.assert_allclose(dist.attrs["range"], [lo, hi], rtol=1e-9)
    for g, counts in want.items():
        np.testing.assert_array_equal(dist["counts"].sel(group=str(g)).values, counts)


@pytest.mark.parametrize("basis, rng", [("store", "store"), ("selection", "selection"), ("store", "selection"),
                                        ("selection", "store")])
def test_each_choice_equals_numpy_on_the_filters_it_names(data, basis, rng):
    ds, w, model, task = data
    sel = fs.query(ds, WHERE)
    keep = task == "A"
    b = _numpy_basis(w if basis == "store" else w[keep])
    c_all, c_sel = _coef(w, b), _coef(w[keep], b)
    lo, hi = (c_all.min(), c_all.max()) if rng == "store" else (c_sel.min(), c_sel.max())
    dist = fs.distributions(sel, basis=basis, range=rng, by="model", bins=BINS)
    assert (dist.attrs["basis_scope"], dist.attrs["range_scope"]) == (basis, rng)
    assert dist.attrs["basis_n_filters"] == (len(w) if basis == "store" else int(keep.sum()))
    np.testing.assert_allclose(dist["explained_variance"].values, b[2], rtol=1e-8)
    _check(dist, _counts(c_sel, model[keep], lo, hi), lo, hi)


def test_the_default_is_the_store_and_reads_no_more_than_needed(data):
    """Default: the store's basis and range (the notebook's); the store's passes 1 and 2 run once and are shared
    by every selection, and a selection of whole records reads only its pass 3."""
    ds, w, model, task = data
    ds = from_arrays(*_data(), chunk_filters=1500)        # a store of its own: nothing cached yet
    sel = fs.query(ds, WHERE)
    dist = sel.filtershift.distributions(by="model", bins=BINS)
    assert (dist.attrs["basis_scope"], dist.attrs["range_scope"]) == ("store", "store")
    b = _numpy_basis(w)
    c = _coef(w, b)
    _check(dist, _counts(c[task == "A"], model[task == "A"], c.min(), c.max()), c.min(), c.max())
    store = store_stats(sel.filtershift.stats)
    assert (store.passes, sel.filtershift.stats.passes) == (2, 1)
    quality = sel.filtershift.quality(orthogonality=False)            # pass 2's sparsity rows: the store's
    assert (store.passes, sel.filtershift.stats.passes) == (2, 1)
    fresh = fs.layer_quality(fs.query(from_arrays(*_data(), chunk_filters=1500), WHERE), orthogonality=False)
    pd.testing.assert_frame_equal(quality, fresh)
    other = fs.query(ds, 'task == "B"').filtershift
    other.drift(by="model", bins=BINS)
    assert (store.passes, other.stats.passes) == (2, 1)
    whole = ds.filtershift.distributions(by="model", bins=BINS)      # the store's own stats, already run
    assert store_stats(ds.filtershift.stats) is ds.filtershift.stats
    assert whole.attrs["basis_scope"] == "store"


def test_a_given_basis_keeps_its_range_rule(data):
    ds, w, model, task = data
    sel = fs.query(ds, WHERE)
    own = fs.distributions(sel, fs.fit_basis(sel), by="model", bins=BINS)
    assert (own.attrs["basis_scope"], own.attrs["range_scope"]) == ("given", "selection")
    glob = fs.distributions(sel, fs.fit_basis(ds), by="model", bins=BINS)
    assert (glob.attrs["basis_scope"], glob.attrs["range_scope"]) == ("given", "store")
    np.testing.assert_array_equal(glob["counts"].values,
                                  fs.distributions(sel, by="model", bins=BINS)["counts"].values)


@pytest.mark.parametrize("kw, match", [({"basis": "global"}, "basis must be 'store' .*Basis; got 'global'"),
                                       ({"range": "all"}, "range must be 'store' .*'selection'.* two numbers"),
                                       ({"range": (1.0, 0.0)}, "lower < upper"),
                                       ({"basis": 3}, "fitted Basis; got int")])
def test_bad_choices_are_refused(data, kw, match):
    sel = fs.query(data[0], WHERE)
    with pytest.raises(InputError, match=match):
        fs.distributions(sel, by="model", bins=BINS, **kw)


def test_cli_drift_and_pca_say_which_basis_and_range(labelled_store, capsys):
    path, w, per_filter = labelled_store.path, labelled_store.weights.astype(np.float64), labelled_store.per_filter
    label = sorted(per_filter["task"].unique())[0]
    keep = (per_filter["task"] == label).to_numpy()
    where = f'task == "{label}"'
    argv = ["drift", path, "--by", "model", "--where", where, "--bins", str(BINS), "--json", "--permutations", "0",
            "--scheduler", "threads"]
    for basis in ("store", "selection"):
        assert main(argv + ["--basis", basis]) == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["basis"], out["range"]) == (basis, basis)
        b = _numpy_basis(w if basis == "store" else w[keep])
        c = _coef(w if basis == "store" else w[keep], b)
        np.testing.assert_allclose(out["range_values"], [c.min(), c.max()], rtol=1e-6)
    assert main([a for a in argv if a != "--json"]) == 0
    text = capsys.readouterr().out
    assert "basis and range: the whole store's" in text
    assert main(["pca", path, "--where", where, "--json", "--scheduler", "threads"]) == 0
    out = json.loads(capsys.readouterr().out)
    b = _numpy_basis(w)
    assert out["basis"] == "store" and out["n_samples"] == len(w) and out["n_selected"] == int(keep.sum())
    np.testing.assert_allclose(out["components"], b[1], atol=1e-6)
    var = np.var(_coef(w[keep], b), axis=0, ddof=1)
    np.testing.assert_allclose(out["selection_variance_ratio"], var / var.sum(), rtol=1e-6)
    assert main(["drift", path, "--by", "model", "--basis", "everything", "--scheduler", "threads"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_report_says_whose_basis_and_range(labelled_store, tmp_path):
    """report.yaml's basis/range (default: the store's) reach results.json and the page."""
    from filtershift.report import build_report

    path, w, per_filter = labelled_store.path, labelled_store.weights.astype(np.float64), labelled_store.per_filter
    label = sorted(per_filter["task"].unique())[0]
    spec = {"groupings": ["task"], "metrics": ["js"], "bootstrap": {"n_boot": 0}, "significance": {"n_perm": 0},
            "figures": {"density_bins": 0}, "where": f'task == "{label}"'}
    result = build_report(path, tmp_path / "rep", config=spec, scheduler="threads")
    b = result.results["basis"]
    c = _coef(w, _numpy_basis(w))
    assert (b["basis_scope"], b["range_scope"], b["n_samples"]) == ("store", "store", len(w))
    np.testing.assert_allclose(b["range"], [c.min(), c.max()], rtol=1e-6)
    assert result.results["parameters"]["basis"] == "store"
    assert "Basis of the whole store; histograms binned over the coefficient range of the whole store" in \
        (result.run_dir / "index.html").read_text()
    with pytest.raises(InputError, match="'basis' must be 'store'"):
        build_report(path, tmp_path / "bad", config={"basis": "global"}, scheduler="threads")
