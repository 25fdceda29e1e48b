"""Models whose label is missing: left out of each grouping by default, as the CNN-Filter-DB notebook's pandas
``groupby`` does, and counted; ``keep_missing`` keeps them as the group "unknown". Checked against pandas on the
source's own meta table (read with pandas, not through filtershift), on schema-2 and schema-1 stores."""

import json

import numpy as np
import pandas as pd
import pytest
import sources
from test_stats_analysis import ref_drift

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.report import build_report, load_config
from filtershift.report.config import spec_hash
from filtershift.store.convert import convert

N_MODELS = 12
#: Models without a Task (both records); model 4's visual category is the real label "unknown", model 5 has none.
NO_TASK = (1, 7)
REAL_UNKNOWN, NO_CATEGORY = 4, 5
REPORT = {"groupings": ["task"], "metrics": ["kl_sym"], "bootstrap": {"n_boot": 0},
          "figures": {"formats": ["png"], "density_bins": 0}}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A dataset.h5 of 12 models x 2 records (about 14,000 filters), its weights and its meta (pandas)."""
    tmp = tmp_path_factory.mktemp("missing")
    sizes = np.random.default_rng(5).integers(300, 900, size=2 * N_MODELS)
    meta = sources.make_meta(sizes)
    model = meta.index.get_level_values("model_id")
    meta["Task"] = meta["Task"].astype(object)
    meta.loc[np.isin(model, NO_TASK), "Task"] = None
    meta["Visual Category"] = meta["Visual Category"].astype(object)
    meta.loc[model == REAL_UNKNOWN, "Visual Category"] = "unknown"
    meta.loc[model == NO_CATEGORY, "Visual Category"] = None
    w = sources.random_weights(int(sizes.sum()), seed=2)
    h5 = sources.write_source(tmp / "dataset.h5", w, meta)
    return tmp, h5, w, meta


@pytest.fixture(scope="module", params=[2, 1], ids=["schema2", "schema1"])
def store(source, request):
    tmp, h5, _, _ = source
    return convert(h5, str(tmp / f"s{request.param}.zarr"), chunk_filters=4096, schema=request.param)


def per_filter(source, column):
    """The label of every filter from the source's meta table (pandas; NaN where missing), Task cleaned by the
    store's default rule."""
    _, _, w, meta = source
    labels = np.empty(len(w), dtype=object)
    for (_, row) in meta.reset_index().iterrows():
        a, b = (int(x) for x in row["filter_ids"].split(":"))
        value = row[column]
        if column == "Task" and isinstance(value, str) and "Segmentation" in value:
            value = "Segmentation"
        labels[a:b + 1] = value
    return labels


def pandas_groups(labels):
    """The groups of a pandas groupby (missing labels dropped), in sorted order."""
    return sorted(pd.Series(labels).groupby(labels, dropna=True).size().index)


def dropped_counts(source, *columns):
    """(filters, models) whose label of any of ``columns`` is missing, from the meta table."""
    _, _, w, meta = source
    flat = meta.reset_index()
    miss = flat[list(columns)].isna().any(axis=1)
    n = flat["filter_ids"].map(lambda s: int(s.split(":")[1]) - int(s.split(":")[0]) + 1)
    return int(n[miss].sum()), int(flat.loc[miss, "model_id"].nunique())


def test_drift_leaves_out_missing_labels_as_pandas_groupby(source, store):
    _, _, w, _ = source
    ds = fs.open_store(store)
    dist = fs.distributions(ds, by="task", min_filters=1)
    d = fs.drift(dist)
    task = per_filter(source, "Task")
    groups = pandas_groups(task)
    assert list(d["group_a"].values) == groups and "unknown" not in groups
    np.testing.assert_allclose(d.values, ref_drift(w, task, groups), rtol=1e-6, atol=1e-12)
    assert dist["n_filters"].values.tolist() == [int((task == g).sum()) for g in groups]
    filters, models = dropped_counts(source, "Task")
    assert filters > 0 and models == len(NO_TASK)
    for attrs in (dist.attrs, d.attrs, fs.group_bases(ds, by="task").attrs):
        assert (attrs["n_filters_dropped"], attrs["n_models_dropped"]) == (filters, models)
        assert attrs["missing_labels"] == "dropped"
    assert ds["task"].attrs["missing"] == "unknown"


def test_combined_grouping_counts_a_model_missing_either_label(source, store):
    ds = fs.open_store(store)
    d = ds.filtershift.drift(by=["task", "visual_category"])
    filters, models = dropped_counts(source, "Task", "Visual Category")
    assert (d.attrs["n_filters_dropped"], d.attrs["n_models_dropped"]) == (filters, models)
    assert models == len(NO_TASK) + 1
    combo = pd.Series(per_filter(source, "Task")) + " / " + pd.Series(per_filter(source, "Visual Category"))
    assert list(d["group_a"].values) == pandas_groups(combo.to_numpy())


def test_keep_missing_gives_the_unknown_group(source, store):
    _, _, w, _ = source
    ds = fs.open_store(store)
    dist = fs.distributions(ds, by="task", keep_missing=True)
    task = pd.Series(per_filter(source, "Task")).fillna("unknown").to_numpy()
    groups = sorted(set(task))
    assert list(dist["group"].values) == groups and "unknown" in groups
    np.testing.assert_allclose(fs.drift(dist).values, ref_drift(w, task, groups), rtol=1e-6, atol=1e-12)
    assert (dist.attrs["n_filters_dropped"], dist.attrs["n_models_dropped"]) == (0, 0)
    assert dist.attrs["missing_labels"] == "kept"
    bases = fs.group_bases(ds, by="task", keep_missing=True)
    assert list(bases["group"].values) == groups


def test_a_real_unknown_label_is_not_a_missing_one(source, store):
    ds = fs.open_store(store)
    category = per_filter(source, "Visual Category")
    dropped = fs.distributions(ds, by="visual_category")
    assert "unknown" in pandas_groups(category) and list(dropped["group"].values) == pandas_groups(category)
    assert dropped["n_filters"].sel(group="unknown").item() == int((category == "unknown").sum())
    assert dropped.attrs["n_models_dropped"] == 1
    kept = fs.distributions(ds, by="visual_category", keep_missing=True)
    assert list(kept["group"].values) == sorted([*pandas_groups(category), "unknown (missing)"])
    assert kept["n_filters"].sel(group="unknown (missing)").item() == int(pd.isna(category).sum())


def test_clean_labels_names_the_missing_label():
    from filtershift.store.format import clean_labels

    labels, missing = clean_labels(pd.Series(["a Segmentation b", None, np.nan]), "Task",
                                   [{"column": "Task", "contains": "Segmentation", "value": "Segmentation"}])
    assert labels.tolist() == ["Segmentation", "unknown", "unknown"] and missing == "unknown"
    labels, missing = clean_labels(pd.Series(["unknown", None]), "Task", [])
    assert labels.tolist() == ["unknown", "unknown (missing)"] and missing == "unknown (missing)"
    assert clean_labels(pd.Series(["x"]), "Task", [])[1] is None


def test_drift_cli_says_what_it_left_out(source, store, capsys):
    filters, models = dropped_counts(source, "Task")
    assert cli(["drift", store, "--permutations", "0", "--by", "Task", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_filters_dropped"], out["n_models_dropped"], out["missing_labels"]) == (filters, models, "dropped")
    assert out["labels"] == pandas_groups(per_filter(source, "Task"))
    assert cli(["drift", store, "--permutations", "0", "--by", "Task"]) == 0
    assert f"left out {models} model(s), {filters:,} filters without a task label" in capsys.readouterr().out
    assert cli(["drift", store, "--permutations", "0", "--by", "Task", "--keep-missing", "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert "unknown" in kept["labels"] and kept["n_filters_dropped"] == 0 and kept["missing_labels"] == "kept"


def test_report_counts_and_never_reuses_the_other_setting(source, tmp_path):
    store = convert(source[1], str(tmp_path / "db.zarr"), chunk_filters=4096)
    filters, models = dropped_counts(source, "Task")
    first = build_report(store, tmp_path / "out", REPORT, scheduler="threads")
    r = json.loads(first.results_json.read_text())
    g = r["groupings"]["task"]
    assert g["dropped"] == {"filters": filters, "models": models} and g["missing_labels"] == "dropped"
    assert "unknown" not in g["labels"] and r["parameters"]["keep_missing"] is False
    assert "unknown" not in r["overview"]["share_3x3"]["by_task"]
    assert f"Left out: {models:,} models ({filters:,} filters) whose task label is missing" in \
        first.index_html.read_text()
    kept = build_report(store, tmp_path / "out", REPORT, scheduler="threads", keep_missing=True)
    assert kept.status == "built" and kept.spec_hash != first.spec_hash
    k = json.loads(kept.results_json.read_text())
    assert "unknown" in k["groupings"]["task"]["labels"] and k["groupings"]["task"]["dropped"]["models"] == 0
    assert "unknown" in k["overview"]["share_3x3"]["by_task"]
    again = build_report(store, tmp_path / "out", {**REPORT, "keep_missing": False}, scheduler="threads")
    assert again.status == "reused" and again.run == first.run


def test_keep_missing_in_the_spec():
    assert load_config(REPORT)["keep_missing"] is False
    assert spec_hash(load_config({**REPORT, "keep_missing": True})) != spec_hash(load_config(REPORT))
    with pytest.raises(InputError, match="'keep_missing' must be true or false"):
        load_config({**REPORT, "keep_missing": "yes"})


def test_where_treats_a_missing_label_as_missing(source, store):
    """--where compares a missing label as missing (false either way), never as the label 'unknown' it shows as;
    a real 'unknown' label is a label."""
    _, _, w, _ = source
    ds = fs.open_store(store)
    task = per_filter(source, "Task")
    present = np.array([isinstance(t, str) for t in task])
    for text, keep in [('task != "Classification"', present & (task != "Classification")),
                       ('not task in ["Classification"]', ~(present & (task == "Classification"))),
                       ('task == "Detection"', present & (task == "Detection"))]:
        np.testing.assert_array_equal(fs.query(ds, text)["weights"].values, w[keep], err_msg=text)
    category = per_filter(source, "Visual Category")
    real = np.array([c == "unknown" for c in category])
    np.testing.assert_array_equal(fs.query(ds, 'visual_category == "unknown"')["weights"].values, w[real])
