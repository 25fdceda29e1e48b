"""The report's questions beyond one drift matrix (issue 16): ``within`` (conditional drift), ``init`` (random
initialisation references) and ``explain`` (attribution). Every number in results.json equals the Python API on the
same store, the page shows each section, the config refuses bad values, and the report still reads the data in
three passes."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.report import build_report, load_config
from filtershift.stats.init_reference import INITS

INIT = ["kaiming_uniform", "xavier_normal"]
SPEC = {
    "groupings": ["task", "depth"],
    "metrics": ["kl_sym", "js"],
    "bootstrap": {"n_boot": 0},
    "significance": {"n_perm": 0},
    "within": [{"by": "task", "strata": "depth"}, {"by": "visual_category", "strata": "task"},
               {"by": "model", "strata": "task"}],
    "init": INIT,
    "explain": 2,
    "figures": {"density_bins": 32, "max_groups": 10, "degenerated_top": 5},
}


@pytest.fixture(scope="module")
def store(labelled_store):
    return labelled_store[0]


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    result = build_report(store, tmp_path_factory.mktemp("reports"), SPEC, scheduler="threads")
    return result, json.loads(result.results_json.read_text()), result.index_html.read_text()


@pytest.fixture(scope="module")
def api(store):
    ds = fs.open_store(store)
    return ds, fs.fit_basis(ds)


def close(got, want):
    """results.json stores NaN as null."""
    got = np.array([np.nan if v is None else v for v in np.ravel(np.array(got, dtype=object))], dtype=np.float64)
    np.testing.assert_allclose(got, np.ravel(np.asarray(want, np.float64)), rtol=1e-12, atol=0, equal_nan=True)


def test_within_equals_conditional_drift(built, api):
    _, r, _ = built
    ds, basis = api
    assert list(r["within"]) == ["task within depth", "visual_category within task"]
    for entry in SPEC["within"][:2]:
        got = r["within"][f"{entry['by']} within {entry['strata']}"]
        want = fs.conditional_drift(ds, basis, by=entry["by"], within=entry["strata"], metric="kl_sym", bins=70)
        assert got["labels"] == [str(x) for x in want["group_a"].values]
        assert got["strata"] == [str(x) for x in want["stratum"].values]
        assert (got["by"], got["within"], got["metric"]) == (entry["by"], entry["strata"], "kl_sym")
        for key in ("pooled", "pooled_weight", "drift", "weight", "n_filters", "n_models"):
            close(got[key], want[key].values)
        pooled = np.array(got["pooled"], dtype=float)
        assert np.isfinite(pooled).sum() > len(got["labels"]), "some pairs are compared"
    strata = r["within"]["task within depth"]["strata"]
    assert strata == [x for x in r["groupings"]["depth"]["labels"] if x in strata], "shallow first, not sorted text"
    assert strata[0] == "[0.0, 0.1]"
    # a comparison of more groups than figures.max_groups is left out, and the page says so
    assert any(n.startswith("model within task: not shown (12 groups") for n in r["notes"])


def test_within_pooled_is_the_weighted_mean_of_the_strata(built):
    """Independently of the API: the pooled value is the weight-averaged drift over the strata."""
    _, r, _ = built
    w = r["within"]["task within depth"]
    d = np.array(w["drift"], dtype=float)
    wt = np.array(w["weight"], dtype=float)
    ok = np.isfinite(d)
    with np.errstate(invalid="ignore"):
        want = np.where(ok, d * wt, 0).sum(0) / np.where(ok, wt, 0).sum(0)
    close(w["pooled"], want)


def test_init_matrix_and_layer_distance_equal_the_api(built, api):
    result, r, _ = built
    ds, basis = api
    g = r["groupings"]["task"]
    dist = fs.distributions(ds, basis, by="task", bins=70, min_filters=1000, min_models=2)
    ref = fs.init_reference(dist, basis, inits=INIT)
    i = g["init"]
    assert i["inits"] == INIT and i["labels"] == g["labels"] + [f"init:{n}" for n in INIT]
    close(i["matrix"], fs.drift(ref, "kl_sym").values)
    assert i["n_filters"] == ref["n_filters"].values.tolist()
    assert i["order"] == g["order"] + [g["size"], g["size"] + 1]
    assert "init" not in r["groupings"]["depth"], "one drift matrix only: the first grouping's"
    layer = pd.read_parquet(result.run_dir / r["tables"]["layer_quality"]["parquet"])
    for name in INIT:
        want = fs.init_distance(ds, basis, name, bins=70)
        close(layer[f"init_distance_{name}"], want.reindex(layer["record"]).to_numpy())
    both = layer[[f"init_distance_{n}" for n in INIT]].to_numpy()
    close(layer["init_distance"], both.min(1))
    assert layer["init_nearest"].tolist() == [INIT[k] for k in both.argmin(1)]
    q = r["quality"]["init"]
    assert (q["inits"], q["metric"], q["bins"]) == (INIT, "kl_sym", 70)
    closest = layer.sort_values("init_distance", kind="stable").head(5)
    assert [x["init_distance"] for x in q["closest_layers"]] == closest["init_distance"].tolist()
    assert [(x["model_id"], x["conv_depth"]) for x in q["closest_layers"]] == \
        list(zip(closest["model_id"], closest["conv_depth"]))


def test_attribution_equals_drift_components(built, api):
    _, r, _ = built
    ds, basis = api
    dist = fs.distributions(ds, basis, by="task", bins=70, min_filters=1000, min_models=2)
    d = fs.drift(dist, "kl_sym").values
    a, b = np.triu_indices(len(d), 1)
    top = np.argsort(-d[a, b], kind="stable")[:2]
    att = r["groupings"]["task"]["attribution"]
    assert att["metric"] == "kl_sym" and len(att["pairs"]) == 2
    parts = fs.drift_components(dist, "kl_sym")
    for pair, k in zip(att["pairs"], top):
        assert pair["index"] == [a[k], b[k]]
        assert (pair["a"], pair["b"]) == (str(dist["group"].values[a[k]]), str(dist["group"].values[b[k]]))
        close(pair["drift"], d[a[k], b[k]])
        want = parts.values[a[k], b[k]]
        close(pair["contributions"], want)
        close(pair["shares"], want / d[a[k], b[k]])
        assert sum(pair["contributions"]) == pytest.approx(pair["drift"], rel=1e-9)
        bins = fs.top_bins(dist, pair["a"], pair["b"], "kl_sym", top=3)
        got = pd.DataFrame(pair["top_bins"])
        pd.testing.assert_frame_equal(got[bins.columns], bins, check_dtype=False, rtol=1e-12)
    assert "attribution" not in r["groupings"]["depth"]


def test_the_passes_did_not_grow(built):
    _, r, page = built
    assert r["run"]["passes"] == 3
    assert "<b>3</b>passes over the data" in page


def test_page_shows_the_sections(built):
    result, r, page = built
    text = re.sub(r"<[^>]+>", " ", page)
    for name, w in r["within"].items():
        assert f'<section id="w-{w["slug"]}"><h2>Within strata: {name}</h2>' in page
        assert f'href="#w-{w["slug"]}"' in page
    w = r["within"]["task within depth"]
    n = len(w["labels"])
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if w["pooled"][i][j] is not None]
    i, j = max(pairs, key=lambda ij: w["pooled"][ij[0]][ij[1]])
    assert f"{w['labels'][i]} vs {w['labels'][j]}" in text
    assert f"{w['pooled_weight'][i][j]:,}" in text, "the pooled weight is shown"
    assert "Closest to random initialisation" in page
    first = r["quality"]["init"]["closest_layers"][0]
    assert f"<td>{first['model']}</td>" in page
    assert "Which components drive the largest drifts" in page and "Against random initialisation" in page
    for key in ("grouping.task.attribution", "grouping.task.init"):
        f = r["figures"][key]["png"]
        assert f'src="{f}"' in page and (result.run_dir / f).stat().st_size > 1000
    assert "grouping.depth.attribution" not in r["figures"] and "grouping.depth.init" not in r["figures"]
    assert "a pair&#x27;s bars sum to its drift" in page.lower() or "bars sum to its drift" in page


# -- the config ------------------------------------------------------------------------------------------------------


def test_config_forms():
    spec = load_config({"within": {"by": "Robust", "strata": "training_dataset"}, "init": True})
    assert spec["within"] == [{"by": "Robust", "strata": "training_dataset"}]
    assert spec["init"] == list(INITS) and spec["explain"] == 3
    assert load_config({"init": "orthogonal"})["init"] == ["orthogonal"]
    assert load_config({"init": False, "within": None})["init"] == [] == load_config({})["within"]


@pytest.mark.parametrize("value,needle", [
    ({"within": {"by": "task"}}, "'within' takes {by: GROUPING, strata: GROUPING}"),
    ({"within": [{"by": "task", "strata": "depth", "metric": "js"}]}, "'within' takes"),
    ({"within": "task"}, "'within' takes"),
    ({"within": {"by": "task", "strata": "task"}}, "names the same grouping twice"),
    ({"within": {"by": "", "strata": "depth"}}, "must each name one grouping"),
    ({"within": [{"by": "task", "strata": "depth"}] * 2}, "the same comparison twice"),
    ({"init": ["kaiming"]}, "'init' must be true (all of them), false, or a list of ['kaiming_uniform'"),
    ({"init": 3}, "'init' must be"),
    ({"explain": -1}, "'explain' must be an integer between 0 and 20"),
    ({"explain": True}, "'explain' must be an integer"),
])
def test_config_errors(value, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        load_config(value)


def test_config_error_exit_code(store, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("init: [xavier]\n")
    assert cli(["report", str(store), "--out", str(tmp_path / "out"), "--config", str(path)]) == 2
    assert "'init' must be" in capsys.readouterr().err
