"""Numeric columns as groupings: NAME:quantiles=K, NAME:deciles, NAME:bins=... against pandas cut/qcut."""

import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift.errors import InputError


@pytest.fixture(scope="module")
def tables(labelled_store):
    ds = labelled_store[1]
    recs, mods = fs.records(ds), fs.models(ds)
    return ds, fs.fit_basis(ds), recs.merge(mods[["model_id", "total_filters"]], on="model_id")


def _sizes(joined, cut):
    return joined.assign(bin=cut).groupby("bin", observed=True)["n"].sum().to_numpy()


def test_model_quantiles_count_models(tables):
    ds, basis, joined = tables
    dist = fs.distributions(basis, by="total_filters:quantiles=3", bins=20)
    per_model = fs.models(ds).set_index("model_id")["total_filters"].astype(float)
    edges = np.unique(np.quantile(per_model, [0, 1 / 3, 2 / 3, 1]))
    cut = pd.cut(joined["total_filters"].astype(float), edges, include_lowest=True)
    np.testing.assert_array_equal(dist["n_filters"].values, _sizes(joined, cut))
    models_per_bin = pd.cut(per_model, edges, include_lowest=True).value_counts(sort=False).to_numpy()
    np.testing.assert_array_equal(dist["n_models"].values, models_per_bin)


def test_record_deciles_and_fixed_bins(tables):
    _, basis, joined = tables
    x = joined["conv_depth_norm"].astype(np.float64)
    dist = fs.distributions(basis, by="conv_depth_norm:bins=0,0.25,0.5,1", bins=20)
    cut = pd.cut(x, [0, 0.25, 0.5, 1], include_lowest=True)
    np.testing.assert_array_equal(dist["n_filters"].values, _sizes(joined, cut))
    assert [str(g) for g in dist["group"].values] == ["[0, 0.25]", "(0.25, 0.5]", "(0.5, 1]"]
    dec = fs.distributions(basis, by="conv_depth_norm:deciles", bins=20)
    cut = pd.cut(x, np.unique(np.quantile(x, np.linspace(0, 1, 11))), include_lowest=True)
    np.testing.assert_array_equal(dec["n_filters"].values, _sizes(joined, cut))


def test_outside_the_bins_is_left_out_and_counted(tables):
    _, basis, joined = tables
    dist = fs.distributions(basis, by="total_filters:bins=0,3000", bins=20)
    outside = joined["total_filters"] > 3000
    assert dist.attrs["n_filters_dropped"] == int(joined["n"][outside].sum())
    kept = fs.distributions(basis, by="total_filters:bins=0,3000", bins=20, keep_missing=True)
    assert [str(g) for g in kept["group"].values][-1] == "missing"


@pytest.mark.parametrize("key,words", [("nope:deciles", "no numeric column"), ("task:deciles", "no numeric column"),
                                       ("total_filters:thirds", "unknown binning"),
                                       ("total_filters:quantiles=0", "K >= 1"),
                                       ("total_filters:bins=5,1", "increasing")])
def test_bad_keys(tables, key, words):
    with pytest.raises(InputError, match=words):
        fs.distributions(tables[1], by=key, bins=20)
