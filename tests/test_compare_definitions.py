"""compare ranks like with like: an extracted model's layers among the database's layer records, its conv depths
(parallel branches pooled) among model x conv depth records, and says when the definitions are mixed."""

import dataclasses

import dask
import numpy as np
import pandas as pd
import pytest
from scipy.stats import percentileofscore
from test_append import fake_model
from test_quality_conventions import notebook_quality
from test_stats_analysis import make

from filtershift.compare import QUALITY, compare, layer_table, reference_note
from filtershift.stats.quality import layer_quality
from filtershift.store.dataset import from_arrays


def _branched(seed=9):
    """Four layers, the last two parallel branches at conv depth 2; the first branch mostly sparse."""
    m = fake_model(seed, layers=((8, 4), (16, 8), (16, 8), (8, 16)))
    layers = list(m.layers)
    layers[1].weights[:100] *= 1e-4
    layers[2] = dataclasses.replace(layers[2], conv_depth=1, conv_depth_norm=layers[1].conv_depth_norm)
    layers[3] = dataclasses.replace(layers[3], conv_depth=2, conv_depth_norm=1.0)
    return dataclasses.replace(m, layers=layers)


def _database(with_layers: bool):
    """make()'s model x conv depth records, plus (``with_layers``) four models of named layer records whose layers
    are far sparser, so ranking among one kind or the other gives other percentiles."""
    w, recs, mods = make(seed=4, solo=False)
    recs = recs.assign(layer="")
    if with_layers:
        rng = np.random.default_rng(3)
        extra, rows = [], []
        for m in range(4):
            mods = pd.concat([mods, pd.DataFrame([{"model_id": 500 + m, "Task": "Classification",
                                                   "Visual Category": "natural", "Name": f"ext{m}"}])])
            for d in range(3):
                x = rng.standard_normal((200, 9)) * 0.1
                x[: 40 * (d + 1)] *= 1e-4
                extra.append(x)
                rows.append({"model_id": 500 + m, "conv_depth": d, "conv_depth_norm": d / 2, "n": 200,
                             "layer": f"block{d}.conv"})
        w = np.concatenate([w, np.concatenate(extra).astype(np.float32)])
        recs = pd.concat([recs, pd.DataFrame(rows)], ignore_index=True)
    return from_arrays(w, recs, mods.reset_index(drop=True), chunk_filters=2000)


@pytest.fixture(scope="module")
def mixed():
    return _database(True)


@pytest.fixture(scope="module")
def depth_only():
    return _database(False)


def _ranks(values, reference):
    return [percentileofscore(reference.dropna(), v, kind="mean") for v in values]


def test_layers_rank_among_layer_records_and_depths_among_depth_records(mixed):
    model = _branched()
    with dask.config.set(scheduler="threads"):
        result = compare(model, mixed, by=["task"])
        db = layer_quality(mixed, orthogonality=False)
    is_layer = db["layer"].astype(str) != ""
    a = result.attrs
    assert (a["layer_reference"], a["definitions_mixed"]) == ("layer", False)
    assert (a["n_layer_records"], a["n_depth_records"]) == (12, int((~is_layer).sum()))
    layers = layer_table(result)
    for metric in QUALITY[:3]:
        np.testing.assert_allclose(layers[f"{metric}_percentile"], _ranks(layers[metric], db.loc[is_layer, metric]))
    depths = layer_table(result, "depth")
    assert list(depths["depth"]) == [0, 1, 2] and list(depths["n"]) == [32, 256, 128]
    pooled = np.concatenate([model.layers[1].weights, model.layers[2].weights])
    assert depths["sparsity"][1] == notebook_quality(pooled)[1]
    for metric in QUALITY[:3]:
        np.testing.assert_allclose(depths[f"{metric}_percentile"], _ranks(depths[metric], db.loc[~is_layer, metric]))
    assert "among the database's layer records (one per convolution): 12 records" in reference_note(result)


def test_a_database_of_depth_records_is_named_as_mixed(depth_only):
    with dask.config.set(scheduler="threads"):
        branched = compare(_branched(), depth_only, by=["task"])
        plain = compare(fake_model(9, layers=((8, 4), (16, 8))), depth_only, by=["task"])
    assert (branched.attrs["layer_reference"], branched.attrs["definitions_mixed"]) == ("depth", True)
    assert "MIXED DEFINITIONS" in reference_note(branched)
    assert (plain.attrs["layer_reference"], plain.attrs["definitions_mixed"]) == ("depth", False)
    assert "MIXED" not in reference_note(plain)
