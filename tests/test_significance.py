"""Permutation p-values of drift (filtershift.stats.significance): exhaustive enumeration on tiny groups, BH against
scipy and a hand-written BH, the null and a planted shift, and the command line's JSON."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import false_discovery_control

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats.significance import bh_adjust
from filtershift.store.dataset import from_arrays


def _data(n_models: int = 10, per_model: int = 400, shift: float = 0.0, seed: int = 0):
    """Two tasks of n_models / 2 models each; filters of task B get ``shift`` added to the centre tap."""
    rng = np.random.default_rng(seed)
    w, recs, mods = [], [], []
    for m in range(n_models):
        task = "A" if m % 2 == 0 else "B"
        x = rng.standard_normal((per_model, 9)) * (1 + 0.3 * rng.random())
        if task == "B":
            x[:, 4] += shift
        w.append(x)
        recs.append({"model_id": m, "conv_depth": 0, "n": per_model})
        mods.append({"model_id": m, "Task": task})
    return from_arrays(np.concatenate(w), pd.DataFrame(recs), pd.DataFrame(mods), chunk_filters=1000)


@pytest.fixture(scope="module")
def null_dist():
    ds = _data(8)
    return fs.distributions(ds, fs.fit_basis(ds), by="task", bins=16)


def _two_group_drift(dist, counts_a, counts_b, metric):
    """fs.drift on a distributions Dataset holding only the two pooled groups (independent of the permutation code)."""
    two = xr.Dataset({"counts": (("group", "component", "bin"), np.stack([counts_a, counts_b])),
                      "explained_variance_ratio": dist["explained_variance_ratio"],
                      "n_filters": ("group", [1, 1]), "n_models": ("group", [1, 1]), "small": ("group", [0, 0])},
                     coords={"group": ["a", "b"], "bin_edges": dist["bin_edges"]})
    two["p"] = two["counts"]
    return float(fs.drift(two, metric).values[0, 1])


@pytest.mark.parametrize("metric", ["kl_sym", "js", "w1"])
def test_exhaustive_p_value_equals_enumeration(null_dist, metric):
    dist = null_dist
    test = fs.drift_test(dist, metric=metric, n_perm=999)
    groups = dist["member_group"].values
    counts = dist["member_counts"].values.astype(np.float64)
    a, b = np.flatnonzero(groups == 0), np.flatnonzero(groups == 1)
    pooled = np.concatenate([a, b])
    observed = _two_group_drift(dist, counts[a].sum(0), counts[b].sum(0), metric)
    values = []
    for chosen in itertools.combinations(range(len(pooled)), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(chosen)] = True
        values.append(_two_group_drift(dist, counts[pooled[mask]].sum(0), counts[pooled[~mask]].sum(0), metric))
    values = np.array(values)
    assert len(values) == 70 == int(test["n_splits"].values[0, 1])
    want = np.mean(values >= observed * (1 - 1e-12))
    assert test["p_value"].values[0, 1] == pytest.approx(want, abs=1e-12)
    assert test["p_value"].values[1, 0] == test["p_value"].values[0, 1]
    np.testing.assert_allclose(test["drift"].values, fs.drift(dist, metric).values)


def test_random_splits_are_seeded_and_bounded():
    ds = _data(20)
    dist = fs.distributions(ds, fs.fit_basis(ds), by="task", bins=16)
    one = fs.drift_test(dist, n_perm=99, seed=1)
    again = fs.drift_test(dist, n_perm=99, seed=1)
    other = fs.drift_test(dist, n_perm=99, seed=2)
    assert int(one["n_splits"].values[0, 1]) == 99          # C(20, 10) > 99: random splits
    p = float(one["p_value"].values[0, 1])
    assert p == float(again["p_value"].values[0, 1])
    assert 1 / 100 <= p <= 1 and p * 100 == pytest.approx(round(p * 100))
    assert abs(p - float(other["p_value"].values[0, 1])) < 0.3


def test_planted_shift_is_significant_and_null_is_not():
    shifted = _data(10, shift=0.8, seed=3)
    dist = fs.distributions(shifted, fs.fit_basis(shifted), by="task", bins=16)
    test = fs.drift_test(dist, n_perm=999)
    # all C(10, 5) = 252 splits: only the observed one and its mirror (A and B swapped) reach the observed drift
    assert int(test["n_splits"].values[0, 1]) == 252
    assert test["p_value"].values[0, 1] == pytest.approx(2 / 252)
    assert bool(test["significant"].values[0, 1])
    null = _data(10, seed=3)
    dist0 = fs.distributions(null, fs.fit_basis(null), by="task", bins=16)
    assert float(fs.drift_test(dist0, n_perm=999)["p_value"].values[0, 1]) > 0.05


def _bh_by_hand(p):
    order = np.argsort(p)
    m = len(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1)
    return out


def test_bh_over_the_upper_triangle(labelled_store):
    ds = labelled_store[1]
    dist = fs.distributions(ds, fs.fit_basis(ds), by="task", bins=20)
    test = fs.drift_test(dist, n_perm=49)
    g = dist.sizes["group"]
    upper = np.triu_indices(g, 1)
    p = test["p_value"].values[upper]
    finite = np.isfinite(p)
    assert finite.sum() >= 3
    got = test["p_adjusted"].values[upper][finite]
    np.testing.assert_allclose(got, false_discovery_control(p[finite], method="bh"))
    np.testing.assert_allclose(got, _bh_by_hand(p[finite]))
    np.testing.assert_array_equal(test["p_adjusted"].values, test["p_adjusted"].values.T)
    for a, b in zip(*upper):
        n_a, n_b = int(dist["n_models"].values[a]), int(dist["n_models"].values[b])
        assert np.isnan(test["p_value"].values[a, b]) == ((n_a == 1 and n_b == 1) or 0 in (n_a, n_b))


def test_parameters_are_checked(null_dist):
    for kw, word in [({"n_perm": 0}, "n_perm"), ({"n_perm": 2.5}, "n_perm"), ({"alpha": 1.5}, "alpha"),
                     ({"metric": "kl"}, "kl")]:
        with pytest.raises(InputError, match=word):
            fs.drift_test(null_dist, **kw)


def test_cli_drift_json_carries_p_values(labelled_store, capsys):
    path = labelled_store[0]
    argv = ["drift", path, "--by", "task", "--json", "--scheduler", "threads", "--permutations", "49"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    ds = labelled_store[1]
    want = fs.drift_test(fs.distributions(ds, fs.fit_basis(ds), by="task"), n_perm=49)
    got = np.array(out["p_value"], dtype=float)
    np.testing.assert_allclose(got, want["p_value"].values, equal_nan=True)
    np.testing.assert_allclose(np.array(out["p_adjusted"], dtype=float), want["p_adjusted"].values, equal_nan=True)
    assert out["permutations"] == 49
    assert main(["drift", path, "--by", "task", "--scheduler", "threads", "--permutations", "49"]) == 0
    text = capsys.readouterr().out
    assert "permutation" in text and "not significant" in text


def test_report_tests_the_first_metric_and_takes_where(labelled_store, tmp_path):
    """The report's grouping carries the permutation test of the first metric (equal to drift_test on the same
    distributions), hatches what is not significant, and ``where`` narrows the records analysed."""
    from filtershift.report import build_report

    path, ds = labelled_store[0], labelled_store[1]
    where = 'conv_depth_norm <= 0.6 and task != "Generative"'
    spec = {"groupings": ["task"], "metrics": ["js", "kl_sym"], "bootstrap": {"n_boot": 0},
            "significance": {"n_perm": 99, "seed": 3}, "figures": {"density_bins": 0}, "where": where,
            "basis": "selection"}
    result = build_report(path, tmp_path / "rep", config=spec, scheduler="threads")
    gr = result.results["groupings"]["task"]
    sub = fs.query(ds, where)
    dist = fs.distributions(sub, fs.fit_basis(sub), by="task", bins=70)
    want = fs.drift_test(dist, "js", n_perm=99, seed=3)
    assert gr["labels"] == [str(g) for g in dist["group"].values] and "Generative" not in gr["labels"]
    assert int(np.sum(gr["n_filters"])) == sub.sizes["filter"]
    np.testing.assert_allclose(np.array(gr["significance"]["p_value"], float), want["p_value"].values,
                               equal_nan=True)
    assert gr["significance"]["metric"] == "js" and gr["significance"]["n_perm"] == 99
    page = (result.run_dir / "index.html").read_text()
    assert "Hatched: not significant" in page
    with pytest.raises(InputError, match="expected a value"):
        build_report(path, tmp_path / "bad", config={"where": "task =="}, scheduler="threads")


def test_bh_adjust_equals_scipy_with_ties_and_nan():
    rng = np.random.default_rng(5)
    for m in (1, 2, 7, 300):
        p = np.round(rng.uniform(0, 1, m) ** 3, 2)            # many ties, as permutation p-values have
        p[rng.random(m) < 0.2] = np.nan
        got = bh_adjust(p)
        finite = np.isfinite(p)
        assert np.array_equal(np.isnan(got), ~finite)
        if finite.any():
            np.testing.assert_allclose(got[finite], false_discovery_control(p[finite], method="bh"), rtol=1e-15)
