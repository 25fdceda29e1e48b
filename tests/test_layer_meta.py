"""Meta tables with one row per layer and extra model columns (issue #16): ``synth --layer-meta`` files convert,
keep every column and expose them as groupings (text, bools) and covariates (numbers)."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.ingest.h5 import parse_meta
from filtershift.store.convert import convert
from filtershift.store.dataset import grouping, models, records
from filtershift.synth import LAYER_META_COLUMNS, read_truth, synthesize

N, MODELS, SEED = 16_000, 12, 3


@pytest.fixture(scope="module")
def layer_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("layer-meta") / "dataset.h5"
    synthesize(path, n_filters=N, n_models=MODELS, seed=SEED, layer_meta=True)
    return path


@pytest.fixture(scope="module")
def store(layer_h5):
    return fs.open_store(convert(layer_h5, layer_h5.with_name("db.zarr")))


@pytest.fixture(scope="module")
def meta(layer_h5):
    """The meta table read independently: one row per layer, index levels as columns."""
    return pd.read_hdf(layer_h5, "meta").reset_index()


def _expected_records(meta: pd.DataFrame) -> pd.DataFrame:
    ends = meta["filter_ids"].str.split(":", expand=True).astype(np.int64)
    out = meta.assign(source_start=ends[0], n=ends[1] - ends[0] + 1).sort_values("source_start")
    return out.reset_index(drop=True)


def test_records_one_per_layer(store, meta, layer_h5):
    rec, want = records(store), _expected_records(meta)
    assert len(rec) == len(meta) and want["layer_id"].duplicated().any()
    with h5py.File(layer_h5) as h5:
        assert rec["n"].sum() == h5["filters"].shape[0]
    for col, src in (("model_id", "model_id"), ("conv_depth", "conv_depth"), ("layer", "layer_name"),
                     ("in_channels", "in_channels"), ("out_channels", "out_channels"), ("groups", "groups"),
                     ("n", "n"), ("source_start", "source_start")):
        np.testing.assert_array_equal(rec[col].to_numpy(np.int64 if col != "layer" else object),
                                      want[src].to_numpy(np.int64 if col != "layer" else object), err_msg=col)
    np.testing.assert_array_equal(rec["conv_depth_norm"], want["conv_depth_norm"].astype(np.float32))
    # parallel branches: two records share a model and a conv depth (v1.0 would pool them into one)
    pairs = rec.groupby(["model_id", "conv_depth"]).size()
    assert (pairs == 2).any() and pairs.max() == 2
    assert (rec["in_channels"] * rec["out_channels"] == rec["n"]).all()


def test_model_columns_kept_with_types(store, meta):
    mod = models(store).set_index("model_id")
    want = meta.drop_duplicates("model_id").set_index("model_id")
    for column in LAYER_META_COLUMNS:
        pd.testing.assert_series_equal(mod[column], want[column].astype(mod[column].dtype), check_names=False)
    assert mod["Robust"].dtype == bool and mod["Top-1 accuracy"].dtype == np.float64
    assert mod["Epochs"].dtype == np.int64 and pd.api.types.is_string_dtype(mod["Training Regime"])
    assert not {"layer_id", "layer_name", "in_channels", "out_channels", "groups"} & set(mod.columns)
    names = grouping(store)
    assert names["robust"] == "Robust" and names["training_regime"] == "Training Regime"
    assert not {"Top-1 accuracy", "Epochs"} & set(names.values())


def test_drift_by_robust(store, meta):
    dist = fs.distributions(store, by="robust", min_filters=1)
    want = _expected_records(meta).groupby("Robust").agg(n=("n", "sum"), models=("model_id", "unique"))
    assert list(dist["group"].values) == ["False", "True"]
    for i, flag in enumerate((False, True)):
        assert int(dist["n_filters"][i]) == want.loc[flag, "n"]
        got = dist["member_model"].values[dist["member_group"].values == i]
        assert sorted(got) == sorted(want.loc[flag, "models"])
    matrix = fs.drift(dist)
    assert matrix.shape == (2, 2) and float(matrix[0, 0]) == 0 and float(matrix[0, 1]) > 0


def test_query_bool_and_float_columns(store, meta):
    per_model = meta.drop_duplicates("model_id").set_index("model_id")
    robust = fs.query(store, "Robust == true")
    assert set(records(robust)["model_id"]) == set(per_model.index[per_model["Robust"]])
    assert robust.sizes["filter"] == _expected_records(meta).query("Robust")["n"].sum()
    labels = fs.query(store, 'robust == "False"')
    assert set(records(labels)["model_id"]) == set(per_model.index[~per_model["Robust"]])
    accurate = fs.query(store, "`Top-1 accuracy` > 70")
    assert set(records(accurate)["model_id"]) == set(per_model.index[per_model["Top-1 accuracy"] > 70])


def test_correlate_with_accuracy(store, meta):
    out = fs.correlate(store, "variance_entropy_norm", "Top-1 accuracy", n_boot=20)
    accuracy = meta.drop_duplicates("model_id").set_index("model_id")["Top-1 accuracy"]
    with_accuracy = meta[meta["model_id"].map(accuracy).notna()]
    assert int(out["n_layers"]) + int(out["n_left_out"]) == len(meta)
    assert int(out["n_layers"]) == len(with_accuracy) and int(out["n_models"]) == accuracy.notna().sum()
    x = out["model_id"].to_series().map(accuracy).to_numpy()
    np.testing.assert_array_equal(out["covariate_values"].values, x)
    rho = pd.Series(out["metric_values"].values).corr(pd.Series(x), method="spearman")
    assert float(out["rho"]) == pytest.approx(rho, abs=1e-12)


def test_csv_meta_gives_the_same_tables(store, tmp_path):
    """CSV meta (``layer_id`` a column, not an index level), written as a store directly by synth's zarr writer."""
    path = tmp_path / "csv.zarr"
    other = fs.open_store(synthesize(path, n_filters=N, n_models=MODELS, seed=SEED, layer_meta=True,
                                     meta_format="csv", format="zarr"))
    pd.testing.assert_frame_equal(records(other), records(store))
    pd.testing.assert_frame_equal(models(other), models(store), check_dtype=False)


def test_synth_default_unchanged(tmp_path, layer_h5):
    plain = tmp_path / "plain.h5"
    synthesize(plain, n_filters=N, n_models=MODELS, seed=SEED)
    assert "layer_meta" not in read_truth(plain)["settings"]
    assert read_truth(layer_h5)["settings"]["layer_meta"] is True
    meta = pd.read_hdf(plain, "meta")
    assert list(meta.index.names) == ["model_id", "conv_depth", "conv_depth_norm"]
    assert not {"layer_name", *LAYER_META_COLUMNS} & set(meta.columns)
    with h5py.File(plain) as a, h5py.File(layer_h5) as b:
        # the planted filters do not depend on the meta layout except through conv_depth_norm's scale
        assert a["filters"].shape == b["filters"].shape
    json.dumps(read_truth(layer_h5))


def test_cli_layer_meta(tmp_path, layer_h5):
    out = tmp_path / "cli.h5"
    assert cli(["synth", str(out), "--filters", str(N), "--models", str(MODELS), "--seed", str(SEED),
                "--layer-meta"]) == 0
    pd.testing.assert_frame_equal(pd.read_hdf(out, "meta"), pd.read_hdf(layer_h5, "meta"))


def test_v10_conversion_unchanged(tmp_path):
    """A v1.0 table (one row per conv depth) converts as before: no layer columns, no new groupings."""
    path = tmp_path / "v10.h5"
    synthesize(path, n_filters=4_000, n_models=4, seed=SEED)
    ds = fs.open_store(convert(path, tmp_path / "v10.zarr"))
    meta = pd.read_hdf(path, "meta").reset_index()
    rec = records(ds)
    want = _expected_records(meta)
    np.testing.assert_array_equal(rec["n"], want["n"])
    assert (rec["layer"] == "").all() and rec["in_channels"].isna().all()
    assert set(models(ds).columns) == (set(meta.columns) - {"conv_depth", "conv_depth_norm", "filter_ids"}
                                       | {"n_filters", "weights_sha256"})


def _meta(**columns) -> pd.DataFrame:
    """Two models, model 0 with two layers at conv depth 0 (filters 0-3, 4-7) and model 1 with one (8-11)."""
    base = {"model_id": [0, 0, 1], "conv_depth": [0, 0, 0], "conv_depth_norm": [0.0, 0.0, 0.0],
            "layer_id": [0, 1, 0], "filter_ids": ["0:3", "4:7", "8:11"], "Task": ["a", "a", "b"]}
    return pd.DataFrame({**base, **columns}).set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])


def test_parse_meta_layers_and_keys():
    mods, rec, _, _ = parse_meta(_meta(), 12)
    assert rec["layer"].tolist() == ["0", "1", "0"] and rec["n"].tolist() == [4, 4, 4]
    assert mods.columns.tolist() == ["model_id", "Task"]
    with pytest.raises(InputError, match="layer_id"):
        parse_meta(_meta().reset_index().assign(layer_id=0).set_index(["model_id", "conv_depth",
                                                                       "conv_depth_norm", "layer_id"]), 12)
    with pytest.raises(InputError, match="conv_depth_norm values"):
        parse_meta(_meta().reset_index().assign(conv_depth_norm=[0.0, 0.5, 0.0])
                   .set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"]), 12)


def test_parse_meta_refuses_a_varying_model_column():
    """A column that varies within a model is not model-level: taking one row's value would be wrong."""
    with pytest.raises(InputError, match=r"\['stride'\] vary within a model"):
        parse_meta(_meta(stride=[1, 2, 1]), 12)
    v10 = _meta(stride=[1, 2, 1]).reset_index().drop(columns="layer_id").assign(conv_depth=[0, 1, 0])
    with pytest.raises(InputError, match="stride"):
        parse_meta(v10.set_index(["model_id", "conv_depth", "conv_depth_norm"]), 12)


def test_bool_column_with_missing_values_is_boolean():
    mods, _, _, _ = parse_meta(_meta(Robust=[True, True, None]), 12)
    assert mods["Robust"].dtype == "boolean" and mods["Robust"].tolist()[0] is True
