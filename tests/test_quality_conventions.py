"""Sparsity and variance-entropy conventions: where the CNN-Filter-DB notebook and torchconvquality differ (a layer
of zeros, filters of zero variance), the notebook's is the default and torchconvquality's one switch away; both
agree on the strict ``<`` at the threshold. Checked against plain numpy/scipy written from each reference."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from test_quality import port_sparsity, port_variance_entropy

from filtershift.errors import InputError
from filtershift.stats.quality import layer_metrics, layer_quality
from filtershift.store.dataset import from_arrays


def notebook_quality(w):
    """The notebook's ``layer_quality_worker`` (main.ipynb, "Filter Quality / Degeneration") on (n, 9) filters:
    variance entropy of the centred filters' SVD spectrum (scipy, base 10) and the share of filters whose every
    |w| is below max|w| / 100."""
    w = np.asarray(w).reshape(-1, 9)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        s = np.linalg.svd(w - w.mean(axis=0), full_matrices=False, compute_uv=False)
        v = s ** 2 / (w.shape[0] - 1)
        t = np.abs(w).max() / 100
        new_layer = np.ones_like(w)
        new_layer[np.abs(w) < t] = 0
        sparsity = (new_layer.sum(axis=1) == 0).sum() / w.shape[0]
        return scipy.stats.entropy(v, base=10), sparsity


def _torch(w):
    w4 = np.asarray(w).reshape(-1, 1, 3, 3)
    return port_variance_entropy(w4)[0], port_sparsity(w4)[0]


def _at_threshold():
    """max|w| = 100, so t = 1 exactly in both references: a filter peaking at 1.0 is not sparse (strict <), one
    peaking at the float32 below 1.0 is, and so is a zero filter."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-50, 50, (16, 9)).astype(np.float32)
    w[0, 0] = 100.0
    w[1] = 0.5
    w[1, 3] = -1.0
    w[2] = np.nextafter(np.float32(1.0), np.float32(0))
    w[3] = 0.0
    return w


LAYERS = {
    "at_threshold": _at_threshold(),
    "zeros": np.zeros((16, 9), np.float32),
    "constant": np.tile(np.arange(1, 10, dtype=np.float32) / 8, (16, 1)),   # dyadic: every mean is exact
    "one": np.random.default_rng(1).normal(size=(1, 9)).astype(np.float32),
    "gauss": np.random.default_rng(2).normal(size=(40, 9)).astype(np.float32),
}


def _same(got, want):
    if np.isnan(want):
        assert np.isnan(got), (got, want)
    else:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_the_references_differ_where_documented():
    """The plain references themselves: equal except a layer of zeros and zero variance (the table of docs)."""
    for name, w in LAYERS.items():
        nb, tq = notebook_quality(w), _torch(w)
        if name == "zeros":
            assert np.isnan(nb[0]) and nb[1] == 0 and tq == (0.0, 1.0)
        elif name == "constant":
            assert np.isnan(nb[0]) and tq[0] == 0 and nb[1] == tq[1] == 0
        else:
            _same(nb[0], tq[0])
            assert nb[1] == tq[1]
    assert notebook_quality(LAYERS["at_threshold"])[1] == 2 / 16


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_metrics_follow_the_chosen_reference(name):
    w = LAYERS[name]
    for convention, ref in (("notebook", notebook_quality(w)), ("torchconvquality", _torch(w))):
        got = layer_metrics(w, convention=convention)
        _same(got["variance_entropy"], ref[0])
        assert got["sparsity"] == ref[1], (name, convention)
    assert layer_metrics(w).keys() == layer_metrics(w, convention="notebook").keys()
    _same(layer_metrics(w)["variance_entropy"], notebook_quality(w)[0])


@pytest.fixture(scope="module")
def store():
    recs = pd.DataFrame({"model_id": np.arange(len(LAYERS)), "conv_depth": 0,
                         "n": [len(w) for w in LAYERS.values()], "layer": list(LAYERS)})
    mods = pd.DataFrame({"model_id": np.arange(len(LAYERS)), "Task": "Classification"})
    return from_arrays(np.concatenate(list(LAYERS.values())), recs, mods, chunk_filters=32)


def test_layer_quality_on_a_store_follows_the_chosen_reference(store):
    """The engine's passes (layers cut by chunk edges) give the same values as the references."""
    for convention, ref in (("notebook", notebook_quality), ("torchconvquality", _torch)):
        table = layer_quality(store, convention=convention, orthogonality=False)
        assert table.attrs["convention"] == convention
        for row in table.itertuples():
            want = ref(LAYERS[row.layer])
            _same(row.variance_entropy, want[0])
            assert row.sparsity == want[1], (row.layer, convention)
    default = layer_quality(store, orthogonality=False)
    zeros = default.set_index("layer").loc["zeros"]
    assert zeros["sparsity"] == 0 and zeros["n_nonsparse"] == 16 and np.isnan(zeros["variance_entropy_clean"])
    assert not zeros["degenerated"]


def test_an_unknown_convention_is_refused(store):
    with pytest.raises(InputError, match="convention must be 'notebook'"):
        layer_metrics(LAYERS["gauss"], convention="torch")
    with pytest.raises(InputError, match="convention must be 'notebook'"):
        layer_quality(store, convention="numpy", orthogonality=False)
