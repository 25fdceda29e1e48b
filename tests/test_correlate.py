"""filtershift correlate: Spearman's rho against scipy, the cluster bootstrap, a planted covariate, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats.correlate import spearman
from filtershift.store.dataset import from_arrays


def _planted(n_models: int = 14, layers: int = 4, per_layer: int = 300, seed: int = 0):
    """Bigger models (``size``) concentrate their filters' variance on fewer directions: lower variance entropy."""
    rng = np.random.default_rng(seed)
    w, recs, mods = [], [], []
    for m in range(n_models):
        size = rng.uniform(0, 3)
        for d in range(layers):
            scale = np.exp(-(size + 0.2 * rng.standard_normal()) * np.arange(9) / 8)
            w.append(rng.standard_normal((per_layer, 9)) * scale)
            recs.append({"model_id": m, "conv_depth": d, "n": per_layer})
        mods.append({"model_id": m, "Task": "Classification", "size": size, "label": f"m{m}"})
    return from_arrays(np.concatenate(w), pd.DataFrame(recs), pd.DataFrame(mods), chunk_filters=2000)


@pytest.fixture(scope="module")
def planted():
    return _planted()


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 200).astype(float), rng.standard_normal(200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_planted_covariate_is_recovered(planted):
    r = fs.correlate(planted, "variance_entropy_norm", "size", n_boot=300)
    q = fs.layer_quality(planted, orthogonality=False)
    size = q["model_id"].map(fs.models(planted).set_index("model_id")["size"])
    assert float(r["rho"]) == pytest.approx(spearmanr(size, q["variance_entropy_norm"]).statistic, abs=1e-12)
    assert float(r["rho"]) < -0.8 and float(r["upper"]) < 0
    assert float(r["lower"]) <= float(r["rho"]) <= float(r["upper"])
    assert int(r["n_layers"]) == 14 * 4 and int(r["n_models"]) == 14 and int(r["n_left_out"]) == 0


def test_bootstrap_resamples_whole_models(planted):
    r = fs.correlate(planted, "variance_entropy_norm", "conv_depth", n_boot=200, seed=7)
    q = fs.layer_quality(planted, orthogonality=False)
    x, y, model = q["conv_depth"].to_numpy(float), q["variance_entropy_norm"].to_numpy(), q["model_id"].to_numpy()
    ids = np.unique(model)
    rng = np.random.default_rng(7)
    boots = []
    for _ in range(200):
        take = np.concatenate([np.flatnonzero(model == ids[i]) for i in rng.integers(0, len(ids), len(ids))])
        boots.append(spearmanr(x[take], y[take]).statistic)
    lo, hi = np.nanquantile(boots, [0.025, 0.975])
    assert float(r["lower"]) == pytest.approx(lo, abs=1e-12) and float(r["upper"]) == pytest.approx(hi, abs=1e-12)
    again = fs.correlate(planted, "variance_entropy_norm", "conv_depth", n_boot=200, seed=7)
    assert float(again["lower"]) == float(r["lower"])


def test_errors_list_the_choices(planted):
    with pytest.raises(InputError, match=r"not a quality metric.*variance_entropy_norm"):
        fs.correlate(planted, "entropy", "size")
    with pytest.raises(InputError, match=r"numeric choices.*size"):
        fs.correlate(planted, "variance_entropy_norm", "sizes")
    with pytest.raises(InputError, match="not numeric"):
        fs.correlate(planted, "variance_entropy_norm", "label")
    with pytest.raises(InputError, match="n_boot"):
        fs.correlate(planted, "variance_entropy_norm", "size", n_boot=1)


def test_cli_json_and_text(labelled_store, capsys):
    path, ds = labelled_store[0], labelled_store[1]
    argv = ["correlate", path, "--with", "total_filters", "--boot", "50", "--scheduler", "threads"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = fs.correlate(ds, "variance_entropy_norm", "total_filters", n_boot=50)
    assert out["rho"] == pytest.approx(float(want["rho"])) and out["n_models"] == int(want["n_models"])
    assert out["lower"] == pytest.approx(float(want["lower"]))
    assert main(argv) == 0
    assert "Spearman's rho of variance_entropy_norm with total_filters" in capsys.readouterr().out
    assert main(argv[:2] + ["--with", "nope", "--scheduler", "threads"]) == 2
    assert "numeric choices" in capsys.readouterr().err
