"""Drift split into components and bins (filtershift.stats.divergence.drift_components / top_bins)."""

import json

import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift import metrics
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats.histograms import normalise
from filtershift.store.dataset import from_arrays


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(4)
    n = [600, 500, 700, 400, 550, 650]
    recs = pd.DataFrame({"model_id": range(6), "conv_depth": [0] * 6, "n": n})
    mods = pd.DataFrame({"model_id": range(6), "Task": ["a", "a", "b", "b", "c", "c"]})
    w = rng.standard_normal((sum(n), 9))
    w[1100:2200, 4] += 1.5                     # task b: the centre tap moves
    ds = from_arrays(w, recs, mods, chunk_filters=1000)
    basis = fs.fit_basis(ds)
    return basis, fs.distributions(ds, basis, by="task", bins=24)


@pytest.fixture(scope="module")
def dist(planted):
    return planted[1]


@pytest.fixture(scope="module")
def basis_of_dist(planted):
    return planted[0]


@pytest.mark.parametrize("name", ["kl_sym", "js", "w1"])
def test_per_bin_terms_sum_to_the_metric(name):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, (2, 9, 30)).astype(float)
    edges = np.linspace(-3, 3, 31)
    m = metrics.metric(name)
    p = normalise(counts, edges) if m.smoothed else counts / counts.sum(-1, keepdims=True)
    widths = np.diff(edges)
    terms = m.per_bin(p[0], p[1], widths)
    assert (terms >= -1e-15).all()
    np.testing.assert_allclose(terms.sum(-1), m.divergence(p, widths)[0, 1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["kl_sym", "js", "w1"])
def test_components_sum_to_the_drift(dist, name):
    parts = fs.drift_components(dist, name)
    np.testing.assert_allclose(parts.sum("component").values, fs.drift(dist, name).values, rtol=1e-10, atol=1e-14)
    assert parts.dims == ("group_a", "group_b", "component") and parts.attrs["units"]


def test_top_bins_by_hand(dist):
    got = fs.top_bins(dist, "a", "b", top=4)
    p = normalise(dist["counts"].values[[0, 1]], dist["bin_edges"].values)
    w = dist["explained_variance_ratio"].values[:, None]
    terms = (p[0] - p[1]) * (np.log(p[0]) - np.log(p[1])) * w
    flat = np.sort(terms, axis=None)[::-1][:4]
    np.testing.assert_allclose(got["contribution"].to_numpy(), flat, rtol=1e-12)
    assert got["share"].iloc[0] == pytest.approx(flat[0] / terms.sum())
    k, b = int(got["component"].iloc[0]), int(got["bin"].iloc[0])
    assert got["lo"].iloc[0] == dist["bin_edges"].values[b] and got["p_a"].iloc[0] == p[0][k, b]
    with pytest.raises(InputError, match="no group"):
        fs.top_bins(dist, "a", "z")
    with pytest.raises(InputError, match="top"):
        fs.top_bins(dist, "a", "b", top=0)


def test_the_moved_tap_leads(dist, basis_of_dist):
    """Task b moved its centre tap: its drift from a is carried by the component that loads on that tap."""
    parts = fs.drift_components(dist).values
    lead = int(np.argmax(parts[0, 1]))
    assert lead == int(np.argmax(np.abs(basis_of_dist.components_[:, 4])))
    assert parts[0, 1, lead] > 0.5 * parts[0, 1].sum()
    assert parts[0, 1].sum() > 3 * parts[0, 2].sum()


def test_cli_json_carries_the_terms(labelled_store, capsys):
    path = labelled_store[0]
    assert main(["drift", path, "--by", "task", "--json", "--permutations", "0", "--scheduler", "threads"]) == 0
    out = json.loads(capsys.readouterr().out)
    terms = np.array(out["contributions"], dtype=float)
    np.testing.assert_allclose(np.nansum(terms, -1), np.nan_to_num(np.array(out["matrix"], dtype=float)),
                               rtol=1e-9, atol=1e-12)
    assert main(["drift", path, "--by", "task", "--permutations", "0", "--explain", "2", "--scheduler",
                 "threads"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " vs " in ln and "component" in ln]
    assert len(lines) == 2
