"""The planted robustness study (issue #16): a synthetic store where ``Robust`` matters only among the models of
one training data set and variance entropy falls with model size; the commands recover both, and control columns
without a planted effect come out null. ``examples/robustness_study.py`` builds the store and runs the study."""

import contextlib
import functools
import io
import json
import pathlib
import runpy
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.synth import read_truth, synthesize

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "robustness_study.py"
ALPHA = 0.05
STRATUM = "CIFAR-10"
WHERE = f'`Training-Dataset` == "{STRATUM}"'


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The example run end to end as a script: its output folder and what it printed."""
    out = tmp_path_factory.mktemp("robustness")
    argv, printed = sys.argv, io.StringIO()
    sys.argv = [str(EXAMPLE), str(out), "--boot", "300"]
    try:
        with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(printed):
            runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def store(study):
    return study[0] / "planted.zarr"


@functools.cache
def _json(*args):
    """What ``filtershift ARGS --json`` prints, parsed (once per argument list)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli([*args, "--json"]) == 0
    return json.loads(printed.getvalue())


def test_example_finds_what_was_planted(study):
    out, printed = study
    found = json.loads((out / "findings.json").read_text())
    assert found["plain"]["p_adjusted"] > ALPHA
    assert found["stratum"]["p_adjusted"] < ALPHA and found["stratum"]["n_models"] == {"False": 5, "True": 5}
    assert found["stratum_control"]["p_adjusted"] > ALPHA
    significant = [s for s, t in found["within"]["strata"].items() if t["p_adjusted"] <= ALPHA]
    assert significant == [STRATUM], found["within"]["strata"]
    assert found["entropy_vs_size"]["upper"] < 0
    assert found["entropy_vs_epochs"]["lower"] < 0 < found["entropy_vs_epochs"]["upper"]
    assert (out / "robustness_study.png").stat().st_size > 10_000
    assert "1. robust vs normal over all models" in printed and "not significant" in printed
    assert f"inside {STRATUM} alone" in printed


def test_robust_matters_only_within_the_planted_stratum(store):
    truth = read_truth(store)["robustness"]
    plain = _json("drift", str(store), "--by", "robust")
    inside = _json("drift", str(store), "--by", "robust", "--where", WHERE)
    assert plain["labels"] == inside["labels"] == ["False", "True"]
    assert inside["n_models"] == [len(truth["normal_models"]), len(truth["robust_models"])] == [5, 5]
    # over all models: small and not significant; inside the stratum: large and significant (5 vs 5 models: 252
    # splits, all enumerated, so the smallest p-value is 2/252)
    assert plain["p_adjusted"][0][1] > ALPHA
    assert inside["p_adjusted"][0][1] < ALPHA
    assert inside["matrix"][0][1] > 10 * plain["matrix"][0][1]
    assert inside["permutations"] == 999 and inside["p_value"][0][1] == pytest.approx(2 / 252)


def test_within_puts_the_drift_in_the_planted_stratum(store):
    plain = _json("drift", str(store), "--by", "robust")
    within = _json("drift", str(store), "--by", "robust", "--within", "training_dataset")
    both = {s: d[0][1] for s, d, n in zip(within["strata"], within["drift"], within["n_models"]) if min(n) >= 2}
    assert STRATUM in both and len(both) >= 4, both
    others = max(v for s, v in both.items() if s != STRATUM)
    assert both[STRATUM] > 5 * others and both[STRATUM] > 10 * plain["matrix"][0][1], both


def test_an_unplanted_split_of_the_stratum_is_not_significant(store):
    control = _json("drift", str(store), "--by", "Epochs:quantiles=2", "--where", WHERE)
    assert control["n_models"] == [5, 5]
    assert control["p_adjusted"][0][1] > ALPHA


def test_correlate_recovers_the_planted_sign(store):
    assert read_truth(store)["entropy"]["sign"] == -1
    size = _json("correlate", str(store), "--with", "total_filters", "--boot", "500")
    control = _json("correlate", str(store), "--with", "Epochs", "--boot", "500")
    assert size["lower"] < size["rho"] < size["upper"] < 0, size
    assert control["lower"] < 0 < control["upper"], control
    assert size["n_models"] == control["n_models"] == 80


# ---- the planting itself, on small files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same small data set without planting, with Robust planted, and with both plantings (the last through
    the command line)."""
    root = tmp_path_factory.mktemp("planting")
    args = {"n_filters": 24_000, "n_models": 24, "seed": 4, "layer_meta": True}
    plain = synthesize(root / "plain.h5", **args)
    robust = synthesize(root / "robust.h5", **args, robust_within=STRATUM)
    both = root / "both.h5"
    assert cli(["synth", str(both), "--filters", "24000", "--models", "24", "--seed", "4", "--layer-meta",
                "--robust-within", STRATUM, "--entropy-gain", "30"]) == 0
    return plain, robust, both


def _read(path):
    with h5py.File(path) as h5:
        weights = h5["filters"][:]
    meta = pd.read_hdf(path, "meta").reset_index()
    bounds = meta["filter_ids"].str.split(":", expand=True).astype(np.int64)
    owner = np.empty(len(weights), dtype=np.int64)
    for m, a, b in zip(meta["model_id"], bounds[0], bounds[1]):
        owner[a:b + 1] = m
    return weights, meta, owner


def test_robust_changes_the_filters_of_the_stratum_robust_models_only(files):
    (w0, meta0, owner), (w1, meta1, _) = _read(files[0]), _read(files[1])
    truth = read_truth(files[1])["robustness"]
    per_model = meta1.groupby("model_id").first()
    stratum = per_model.index[per_model["Training-Dataset"] == STRATUM]
    assert sorted(stratum) == sorted(truth["robust_models"] + truth["normal_models"])
    assert per_model.loc[truth["robust_models"], "Robust"].all()
    assert not per_model.loc[truth["normal_models"], "Robust"].any()
    assert len(truth["robust_models"]) >= 1 and len(truth["normal_models"]) >= 1
    planted = np.isin(owner, truth["robust_models"])
    np.testing.assert_array_equal(w1[~planted], w0[~planted])
    assert (w1[planted] != w0[planted]).any(axis=1).mean() > 0.1
    untouched = ["Training-Dataset", "Robust", "Top-1 accuracy", "Training Regime", "Name"]
    others = ~per_model.index.isin(stratum)
    pd.testing.assert_frame_equal(per_model.loc[others].drop(columns=untouched + ["model"]),
                                  meta0.groupby("model_id").first().loc[others].drop(columns=untouched + ["model"]))


def test_entropy_gain_scales_each_filter_and_keeps_its_direction(files):
    (w1, _, owner), (w2, _, _) = _read(files[1]), _read(files[2])
    gain = {int(k): v for k, v in read_truth(files[2])["entropy"]["model_gain"].items()}
    assert min(gain.values()) == 0 and max(gain.values()) == pytest.approx(30)
    g = np.array([gain[m] for m in owner])
    w = w1.astype(np.float64)
    norm = np.linalg.norm(w, axis=1)
    cos = w.sum(axis=1) / (3 * np.where(norm > 0, norm, 1))
    np.testing.assert_allclose(w2, w * (1 + g * cos**2)[:, None], rtol=1e-5, atol=1e-30)
    scaled = [x / np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-30) for x in (w1, w2)]
    np.testing.assert_allclose(scaled[1], scaled[0], rtol=1e-5, atol=1e-6)


def test_planting_options_are_checked(tmp_path, capsys):
    with pytest.raises(InputError, match="layer_meta"):
        synthesize(tmp_path / "a.h5", n_filters=6400, n_models=4, robust_within=STRATUM)
    with pytest.raises(InputError, match="CIFAR-100"):
        synthesize(tmp_path / "a.h5", n_filters=6400, n_models=4, layer_meta=True, robust_within="COCO")
    with pytest.raises(InputError, match="entropy_gain"):
        synthesize(tmp_path / "a.h5", n_filters=6400, n_models=4, entropy_gain=-1.0)
    assert cli(["synth", str(tmp_path / "a.h5"), "--filters", "6400", "--models", "4", "--entropy-gain", "-1"]) != 0
    assert "--entropy-gain" in capsys.readouterr().err
    assert not (tmp_path / "a.h5").exists()
