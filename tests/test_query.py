"""``--where`` expressions (filtershift.store.query): the selection equals pandas on the tables read with plain
zarr, errors name the problem, and the command line takes the option."""

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from test_xarray_idioms import _pca_reference

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.store.format import Location, read_table
from filtershift.store.query import parse


@pytest.fixture(scope="module")
def tables(labelled_store):
    """Per record: its records-table row joined with its model's row, read without filtershift's Dataset."""
    path = labelled_store[0]
    recs = read_table(Location.of(path), "records", 1)
    mods = read_table(Location.of(path), "models", 1)
    joined = recs.merge(mods, on="model_id", how="left", suffixes=("", "_model"))
    w = zarr.open_group(path, mode="r")["weights"][:]
    return labelled_store, joined, w


def _expected(joined, w, keep_record):
    keep = np.repeat(np.asarray(keep_record, bool), joined["n"].to_numpy())
    return w[keep]


CASES = [
    ('Task == "Classification" and conv_depth_norm <= 0.3',
     lambda t: (t["Task"] == "Classification") & (t["conv_depth_norm"] <= np.float32(0.3))),
    ('conv_depth in [0, 2] or model_id == 3', lambda t: t["conv_depth"].isin([0, 2]) | (t["model_id"] == 3)),
    ('not (conv_depth < 2) and total_filters > 1000',
     lambda t: ~(t["conv_depth"] < 2) & (t["total_filters"] > 1000)),
    ("`Training-Dataset` not in ['CIFAR-10', 'ImageNet1k']",
     lambda t: t["Training-Dataset"].notna() & ~t["Training-Dataset"].isin(["CIFAR-10", "ImageNet1k"])),
    ('n >= 200 and (conv_depth == 1 or conv_depth == 3)',
     lambda t: (t["n"] >= 200) & t["conv_depth"].isin([1, 3])),
]


@pytest.mark.parametrize("text,pandas_rule", CASES, ids=[c[0] for c in CASES])
def test_query_equals_pandas_on_the_tables(tables, text, pandas_rule):
    store, joined, w = tables
    ds = store[1]
    keep = pandas_rule(joined).to_numpy(bool)
    assert 0 < keep.sum() < len(keep), "the case must select some records, not all"
    sub = fs.query(ds, text)
    np.testing.assert_array_equal(sub["weights"].values, _expected(joined, w, keep))
    assert fs.records(sub)["record"].tolist() == joined["record"][keep].tolist()
    np.testing.assert_array_equal(ds.filtershift.query(text)["weights"].values, sub["weights"].values)
    assert sub.attrs["selection"] == text


def test_coordinate_name_and_column_name_agree(tables):
    store, _, _ = tables
    ds = store[1]
    a = fs.records(fs.query(ds, 'task == "Detection"'))["record"].tolist()
    b = fs.records(fs.query(ds, '`Task` == "Detection"'))["record"].tolist()
    assert a == b and a


def test_missing_values_compare_false(tables):
    store, joined, _ = tables
    ds = store[1]
    col = "Dataset URL"
    present = joined[col].notna().to_numpy()
    assert 0 < present.sum() < len(present), "the synthetic meta leaves some URLs out"
    some = joined[col][present].iloc[0]
    eq = fs.records(fs.query(ds, f"`{col}` == {json.dumps(some)}"))["record"].tolist()
    ne = fs.records(fs.query(ds, f"`{col}` != {json.dumps(some)}"))["record"].tolist()
    assert eq == joined["record"][(joined[col] == some).fillna(False).to_numpy(bool)].tolist()
    assert ne == joined["record"][present & (joined[col] != some).fillna(False).to_numpy(bool)].tolist()


@pytest.mark.parametrize("text,words", [
    ('task = "Classification"', ["write '=='", "column 6"]),
    ('task == "Classification" and', ["expected a name", "the end"]),
    ('(task == "Detection"', ["expected ')'"]),
    ('task == "Clasification"', ["no label 'Clasification'", "'Classification'"]),
    ('tsk == "Detection"', ["unknown name", "'task'", "backticks"]),
    ('total_filters > "many"', ["holds numbers"]),
    ('task > 3', ["holds text"]),
    ('task >= "Detection"', ["orders numbers"]),
    ("conv_depth > 10000", ["matched no records"]),
    ("import os", ["expected a comparison"]),
    ('task == "x"; rm -rf /', ["unexpected character ';'"]),
])
def test_errors_name_the_problem(tables, text, words):
    ds = tables[0][1]
    with pytest.raises(InputError) as err:
        fs.query(ds, text)
    for word in words:
        assert word in str(err.value), str(err.value)


def test_parse_gives_the_tree():
    q = parse("a == 1 or not b in ['x', \"y\"] and c <= -2.5e1")
    assert q.names == {"a", "b", "c"}
    assert type(q.root).__name__ == "BoolOp" and q.root.op == "or"
    assert q.root.parts[1].op == "and"
    assert q.root.parts[1].parts[1].value == -25.0


def test_cli_where_on_pca_and_drift(tables, capsys):
    store, joined, w = tables
    text = 'conv_depth_norm <= 0.5 and task in ["Classification", "Detection"]'
    keep = ((joined["conv_depth_norm"] <= np.float32(0.5)) & joined["Task"].isin(["Classification", "Detection"]))
    assert main(["pca", store[0], "--where", text, "--basis", "selection", "--json", "--scheduler", "threads"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_samples"] == int(joined["n"][keep.to_numpy()].sum())
    mean, comps, _ = _pca_reference(_expected(joined, w, keep.to_numpy()))
    np.testing.assert_allclose(out["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(out["components"][:3], comps[:3], atol=1e-4)
    assert main(["drift", store[0], "--by", "task", "--where", text, "--json", "--scheduler", "threads"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["Classification", "Detection"]
    assert main(["pca", store[0], "--where", "task ==", "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("filtershift pca: error: --where: expected a value") and "Traceback" not in err


def test_ordering_is_rejected_on_a_table_of_text_only():
    cols = {"x": pd.Series(["a", None, "b"]).to_numpy()}
    with pytest.raises(InputError, match="orders numbers"):
        parse("x < 'b'").mask(cols)
    assert parse("x != 'a'").mask(cols).tolist() == [False, False, True]
