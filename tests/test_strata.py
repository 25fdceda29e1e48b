"""Conditional drift (filtershift.stats.strata): equal to separate runs per stratum, pooled by hand, and a planted
confounder that the unconditional drift mistakes for a shift."""

import json

import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.store.dataset import from_arrays


def _confounded(seed: int = 0):
    """Robust models are mostly trained on set S1, normal ones on S2; within a set, robust and normal filters come
    from the same distribution, and the two sets differ strongly."""
    rng = np.random.default_rng(seed)
    w, recs, mods = [], [], []
    plan = [("yes", "S1")] * 5 + [("yes", "S2")] * 1 + [("no", "S1")] * 1 + [("no", "S2")] * 5
    for m, (robust, dataset) in enumerate(plan):
        x = rng.standard_normal((3000, 9))
        if dataset == "S2":
            x[:, 4] += 3.0
        w.append(x)
        recs.append({"model_id": m, "conv_depth": 0, "n": 3000})
        mods.append({"model_id": m, "Robust": robust, "Training-Dataset": dataset, "Task": "Classification"})
    return from_arrays(np.concatenate(w), pd.DataFrame(recs), pd.DataFrame(mods), chunk_filters=9000)


@pytest.fixture(scope="module")
def confounded():
    ds = _confounded()
    return ds, fs.fit_basis(ds)


def test_each_stratum_equals_a_separate_run(confounded):
    ds, basis = confounded
    c = fs.conditional_drift(basis, by="robust", within="training_dataset", bins=30)
    combined = fs.distributions(basis, by=["training_dataset", "robust"], bins=30)
    edges = combined["bin_edges"].values
    for s in ("S1", "S2"):
        sub = fs.query(ds, f'training_dataset == "{s}"')
        alone = fs.distributions(sub, basis, by="robust", bins=30, range=(edges[0], edges[-1]))
        want = fs.drift(alone).values
        np.testing.assert_allclose(c["drift"].sel(stratum=s).values, want, rtol=1e-12)
        np.testing.assert_array_equal(c["n_filters"].sel(stratum=s).values, alone["n_filters"].values)


def test_pooled_is_the_filter_weighted_mean(confounded):
    _, basis = confounded
    c = fs.conditional_drift(basis, by="robust", within="training_dataset", bins=30)
    d, nf = c["drift"].values[:, 0, 1], c["n_filters"].values
    weights = nf[:, 0] + nf[:, 1]
    assert c["pooled"].values[0, 1] == pytest.approx((d * weights).sum() / weights.sum(), rel=1e-12)
    assert c["pooled_weight"].values[0, 1] == weights.sum() == 36000


def test_the_confounder_is_removed(confounded):
    _, basis = confounded
    plain = fs.drift(fs.distributions(basis, by="robust", bins=30)).values[0, 1]
    pooled = fs.conditional_drift(basis, by="robust", within="training_dataset", bins=30)["pooled"].values[0, 1]
    assert plain > 10 * pooled, (plain, pooled)          # 0.40 against 0.014 when written


def test_same_grouping_twice_is_refused(confounded):
    with pytest.raises(InputError, match="same grouping"):
        fs.conditional_drift(confounded[1], by="robust", within="robust")


def test_cli_within(labelled_store, capsys):
    path, ds = labelled_store[0], labelled_store[1]
    argv = ["drift", path, "--by", "task", "--within", "depth", "--scheduler", "threads"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = fs.conditional_drift(ds, by="task", within="depth")
    np.testing.assert_allclose(np.array(out["pooled"], float), want["pooled"].values, equal_nan=True)
    assert out["within"] == "depth" and len(out["strata"]) == want.sizes["stratum"]
    assert main(argv) == 0
    assert "pooled over" in capsys.readouterr().out
