"""Random-initialisation references (filtershift.stats.init_reference): samplers against torch.nn.init, the
pseudo-groups' histograms against plain numpy, their sampling error, and a planted untrained model."""

import importlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

import filtershift
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats.divergence import pairwise
from filtershift.stats.histograms import normalise

#: The module (its name on filtershift.stats is the function, like kde).
ir = importlib.import_module("filtershift.stats.init_reference")

SMALL = {"n_filters": 5000, "layers": ((16, 32), (32, 64))}


def trained_like(rng, out, inn):
    """Structured filters (blob and edges at random amplitudes, plus noise): far from any initialisation."""
    blob = np.array([1, 2, 1, 2, 4, 2, 1, 2, 1], float)
    sobel = np.array([-1, 0, 1, -2, 0, 2, -1, 0, 1], float)
    n = out * inn
    a, b, c = rng.normal(size=(3, n, 1))
    return (a * blob + b * sobel + c * sobel.reshape(3, 3).T.ravel() + 0.3 * rng.normal(size=(n, 9))).reshape(
        out, inn, 3, 3)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A store of 4 models x 2 layers of 32x32 trained-like filters, model 2's freshly initialised by torch's
    Conv2d default (state dicts read and appended like any model); its Dataset, basis and task distributions."""
    tmp = tmp_path_factory.mktemp("init_reference")
    rng = np.random.default_rng(5)
    models = []
    for model in range(4):
        torch.manual_seed(model)
        net = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3), torch.nn.Conv2d(32, 32, 3))
        if model != 2:
            with torch.no_grad():
                for layer in net:
                    layer.weight.copy_(torch.from_numpy(trained_like(rng, 32, 32)))
        torch.save(net.state_dict(), tmp / f"m{model}.pt")
        models.append(filtershift.read_model(tmp / f"m{model}.pt"))
    meta = pd.DataFrame({"model": [f"m{i}.pt" for i in range(4)], "Task": ["Classification", "Detection"] * 2})
    store = tmp / "s.zarr"
    filtershift.add_models(store, models, meta=meta)
    ds = filtershift.open_store(store)
    basis = filtershift.fit_basis(ds)
    return store, ds, basis, filtershift.distributions(ds, basis, by="task", fine_bins=40)


@pytest.mark.parametrize("init", ir.INITS)
@pytest.mark.parametrize("shape", [(16, 32), (64, 8)])
def test_samplers_match_torch(init, shape):
    inn, out = shape
    ours = ir.sample_layer(init, inn, out, np.random.default_rng(0))
    assert ours.shape == (out, inn, 3, 3) and ours.dtype == np.float32
    torch.manual_seed(0)
    if init == "kaiming_uniform":
        theirs = torch.nn.Conv2d(inn, out, 3).weight.detach().numpy()
    else:
        t = torch.empty(out, inn, 3, 3)
        fn = {"kaiming_normal": lambda x: torch.nn.init.kaiming_normal_(x, mode="fan_in", nonlinearity="relu"),
              "xavier_uniform": torch.nn.init.xavier_uniform_, "xavier_normal": torch.nn.init.xavier_normal_,
              "orthogonal": torch.nn.init.orthogonal_}[init]
        theirs = fn(t).numpy()
    assert sps.ks_2samp(ours.ravel(), theirs.ravel()).pvalue > 1e-3
    assert ours.std() == pytest.approx(theirs.std(), rel=0.05)
    if init == "orthogonal":  # orthonormal rows (out < in*9) or columns, like torch's
        flat = ours.reshape(out, -1).astype(np.float64)
        gram = flat @ flat.T if out <= flat.shape[1] else flat.T @ flat
        np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)


def test_pseudo_groups_bins_match_numpy(planted):
    _, ds, basis, dist = planted
    out = ir.init_reference(dist, basis, ["kaiming_uniform", "orthogonal"], seed=3, **SMALL)
    edges = dist["bin_edges"].values
    assert list(out["group"].values) == list(dist["group"].values) + ["init:kaiming_uniform", "init:orthogonal"]
    dropped = []
    for name in ("kaiming_uniform", "orthogonal"):
        w, layer = ir.sample_filters(name, seed=3, **SMALL)
        w = w.astype(np.float64)
        coef = (w / np.abs(w).max(1, keepdims=True) - basis.mean_) @ basis.components_.T
        want = np.stack([np.histogram(coef[:, j], bins=len(edges) - 1, range=(edges[0], edges[-1]))[0]
                         for j in range(coef.shape[1])])
        got = out.sel(group=f"init:{name}")
        np.testing.assert_array_equal(got["counts"].values, want)
        np.testing.assert_array_equal(got["n_filters"].values, len(w))
        fine = np.stack([np.histogram(coef[:, j], bins=40, range=(edges[0], edges[-1]))[0]
                         for j in range(coef.shape[1])])
        np.testing.assert_array_equal(got["fine_counts"].values, fine)
        np.testing.assert_allclose(got["coef_var"].values, coef.var(0, ddof=1), rtol=1e-9)
        g = list(out["group"].values).index(f"init:{name}")
        members = out["member_counts"].values[out["member_group"].values == g]
        assert len(members) == layer.max() + 1 == got["n_models"]
        np.testing.assert_array_equal(members.sum(0), want)
        dropped.append(coef.size - want.sum())
    assert out.attrs["init_dropped"] == dropped and sum(dropped) > 0  # the store's range is narrower: dropped
    for var in ("counts", "p", "n_filters", "member_counts", "member_model"):  # the real groups are untouched
        np.testing.assert_array_equal(out[var].values[: dist[var].shape[0]], dist[var].values)
    assert (out["member_model"].values[dist.sizes["member"]:] < 0).all()


def test_reference_is_sampled_once_per_basis_and_range(planted, monkeypatch):
    """init_reference and init_distance on one basis and range (a report asks for both) sample each initialiser
    once; another seed, basis or range samples anew, and the remembered counts cannot be changed."""
    basis = planted[2]
    dist = filtershift.distributions(basis, by="task")     # no fine bins, as the report's
    calls = []
    sample = ir.sample_filters
    monkeypatch.setattr(ir, "sample_filters", lambda *a, **k: calls.append((a, k)) or sample(*a, **k))
    monkeypatch.setattr(ir, "_COUNTED", {})
    ref = ir.init_reference(dist, basis, ["kaiming_uniform"], seed=5, **SMALL)
    assert len(calls) == 1
    dist_a = ir.init_distance(basis, basis, "kaiming_uniform", bins=dist.sizes["bin"], seed=5, **SMALL)
    assert len(calls) == 1, "the same sample, counted once"
    ir.init_distance(basis, basis, "kaiming_uniform", bins=dist.sizes["bin"], seed=6, **SMALL)
    ir.init_distance(basis, basis, "kaiming_uniform", bins=dist.sizes["bin"] + 1, seed=5, **SMALL)
    assert len(calls) == 3
    monkeypatch.setattr(ir, "_COUNTED", {})
    fresh = ir.init_distance(basis, basis, "kaiming_uniform", bins=dist.sizes["bin"], seed=5, **SMALL)
    pd.testing.assert_series_equal(dist_a, fresh)
    np.testing.assert_array_equal(ref.sel(group="init:kaiming_uniform")["counts"].values,
                                  next(iter(ir._COUNTED.values()))[0]["counts"].sum(0))
    with pytest.raises(ValueError):
        next(iter(ir._COUNTED.values()))[0]["counts"][0, 0, 0] = 1


def test_pseudo_groups_drift_within_seed_error(planted):
    """kaiming_uniform and xavier_uniform are the same distribution after scaling, so their drift is sampling
    error (two seeds of one initialiser likewise); the Gaussian and the real groups are far."""
    _, ds, basis, dist = planted
    out = ir.init_reference(dist, basis, ["kaiming_uniform", "xavier_uniform", "kaiming_normal"])
    d = filtershift.drift(out)
    same = float(d.sel(group_a="init:kaiming_uniform", group_b="init:xavier_uniform"))
    assert 0 < same < ir.SEED_ERROR
    assert float(d.sel(group_a="init:kaiming_uniform", group_b="init:kaiming_normal")) > 10 * ir.SEED_ERROR
    assert float(d.sel(group_a="Classification", group_b="init:kaiming_uniform")) > 100 * ir.SEED_ERROR
    other = ir.init_reference(dist, basis, ["kaiming_uniform"], seed=1)
    pair = np.stack([x["counts"].sel(group="init:kaiming_uniform") for x in (out, other)])
    p = normalise(pair, dist["bin_edges"].values)
    seed_drift = pairwise(p, dist["explained_variance_ratio"].values)[0, 1]
    assert 0 < seed_drift < ir.SEED_ERROR
    ci = filtershift.drift_ci(out, n_boot=20)
    # a reference is many sampled pseudo-layers, not one model: its pairs get intervals
    refs = [g for g in out["group"].values if str(g).startswith("init:")]
    sub = ci.sel(group_a=refs)
    assert np.isfinite(sub["upper"].values).all() and (sub["upper"] >= sub["lower"]).all()
    test = filtershift.drift_test(out, n_perm=19)
    assert test["p_value"].sel(group_a="Classification", group_b="init:kaiming_uniform") < 0.2


def test_planted_untrained_model_is_nearest_init(planted):
    _, ds, basis, _ = planted
    dist = ir.init_distance(ds, basis, "kaiming_uniform")
    m = filtershift.records(ds).set_index("record")["model_id"]
    nearest = dist.sort_values().index[:2]
    assert set(m.loc[nearest]) == {2}
    assert dist.drop(nearest).min() > 10 * dist.loc[nearest].max()
    assert dist.loc[nearest].max() < 0.5


def test_cli_quality_init_column(planted, capsys):
    store = planted[0]
    assert main(["quality", str(store), "--init", "kaiming_uniform", "--json", "--no-orthogonality"]) == 0
    rows = json.loads(capsys.readouterr().out)
    best = min(rows, key=lambda r: r["init_distance"])
    assert best["model_id"] == 2 and all(math.isfinite(r["init_distance"]) for r in rows)


def test_bad_arguments(planted):
    _, ds, basis, dist = planted
    with pytest.raises(InputError, match="unknown initialiser"):
        ir.init_reference(dist, basis, ["he"], **SMALL)
    with pytest.raises(InputError, match="distinct"):
        ir.init_reference(dist, basis, ["orthogonal", "orthogonal"], **SMALL)
    with pytest.raises(InputError, match="distinct"):
        ir.init_reference(ir.init_reference(dist, basis, "orthogonal", **SMALL), basis, "orthogonal", **SMALL)
    with pytest.raises(InputError, match="n_filters"):
        ir.init_reference(dist, basis, n_filters=0)
    with pytest.raises(InputError, match="layers"):
        ir.init_reference(dist, basis, layers=[(16, -1)])
    with pytest.raises(InputError, match="layers"):
        ir.sample_filters("orthogonal", layers=[(16.5, 3)])
    n = dist.sizes["group"]
    extended = ir.init_reference(dist.assign(score=(("group", "component"), np.ones((n, 9)))), basis, **SMALL)
    assert np.isnan(extended["score"].values[n:]).all() and (extended["score"].values[:n] == 1).all()
    with pytest.raises(InputError, match="'flag'"):
        ir.init_reference(dist.assign(flag=("group", np.arange(n))), basis, **SMALL)
    with pytest.raises(InputError, match="seed"):
        ir.init_reference(dist, basis, seed=-1, **SMALL)
    with pytest.raises(InputError, match="components"):
        ir.init_reference(dist, filtershift.fit_basis(ds, n_components=3), **SMALL)
    with pytest.raises(InputError, match="distributions"):
        ir.init_reference(ds, basis, **SMALL)
    with pytest.raises(InputError, match="unknown initialiser"):
        ir.init_distance(ds, basis, "xavier")


def test_cli_init_errors(planted, capsys):
    store = str(planted[0])
    assert main(["quality", store, "--init", "he"]) == 2
    assert "unknown initialiser" in capsys.readouterr().err
    assert main(["quality", store, "--init", "orthogonal", "--models"]) == 2
    assert "drop --models" in capsys.readouterr().err


def test_drift_cli_adds_init_groups(labelled_store, capsys):
    """`filtershift drift --init NAME` appends the pseudo-group; the CLI's list of names is the module's."""
    from filtershift.cli import drift as drift_cli

    assert drift_cli.INIT_NAMES == ir.INITS
    argv = ["drift", labelled_store[0], "--by", "task", "--init", "kaiming_uniform", "--permutations", "0",
            "--json", "--scheduler", "threads"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"][-1] == "init:kaiming_uniform" and out["n_filters"][-1] >= ir.DEFAULT_N_FILTERS
