"""Placing a model against the database: drift to each group and the nearest models, against numpy."""

import json

import dask
import numpy as np
import pytest
from test_append import fake_model
from test_stats_analysis import make, per_filter, ref_hist, ref_kl, ref_pca, ref_scale

from filtershift.cli import main as cli
from filtershift.compare import compare, plot, summary_table
from filtershift.store.dataset import from_arrays


@pytest.fixture(scope="module")
def db():
    w, recs, mods = make(seed=4, solo=False)
    return w, recs, mods, from_arrays(w, recs, mods, chunk_filters=2000)


def reference(w, labels, groups, model_w):
    """The model's drift to each group, by the definitions, with the database's basis and range."""
    mean, comps, _, ratio = ref_pca(w)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    mine = (ref_scale(model_w) - mean) @ comps.T
    pm = [ref_hist(mine[:, k], lo, hi) for k in range(9)]
    out = []
    for g in groups:
        pg = [ref_hist(coef[labels == g, k], lo, hi) for k in range(9)]
        out.append(sum(ratio[k] * (ref_kl(pm[k], pg[k]) + ref_kl(pg[k], pm[k])) for k in range(9)))
    outside = np.mean((mine < lo) | (mine > hi))
    return np.array(out), outside


def test_drift_to_groups_and_models_equals_numpy(db):
    w, recs, mods, ds = db
    model = fake_model(7, layers=((32, 16), (32, 32)))
    # shrink the model's filters so most coefficients stay inside the database range
    for layer in model.layers:
        layer.weights *= 0.1
    with dask.config.set(scheduler="threads"):
        result = compare(model, ds, by=["task"], top=5)
    tasks = list(result["task_group"].values)
    want, outside = reference(w, per_filter(recs, mods, "Task"), tasks, model.filters())
    np.testing.assert_allclose(result["drift_task"].values, want, rtol=1e-6)
    assert result.attrs["outside_range"] == pytest.approx(outside, abs=1e-9)
    ids = recs["model_id"].to_numpy().repeat(recs["n"].to_numpy())
    per_model, _ = reference(w, ids, sorted(set(ids)), model.filters())
    order = np.argsort(per_model)[:5]
    assert list(result["nearest_model_id"].values) == [sorted(set(ids))[i] for i in order]
    np.testing.assert_allclose(result["nearest_drift"].values, per_model[order], rtol=1e-6)


def test_table_figure_and_cli_json(tmp_path, db, capsys):
    w, recs, mods, ds = db
    model = fake_model(8)
    with dask.config.set(scheduler="threads"):
        result = compare(model, ds, by=["task", "visual_category"])
    table = summary_table(result)
    assert set(table["grouping"]) == {"task", "visual_category"}
    assert (table.groupby("grouping")["drift"].apply(lambda s: s.is_monotonic_increasing)).all()
    plot(result, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_cli_on_a_store_and_an_onnx_file(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from filtershift.synth import synthesize

    store = synthesize(tmp_path / "db.zarr", n_filters=60_000, n_models=8, seed=1, format="zarr")
    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(8, 3, 3, 3)) * 0.1).astype(np.float32)
    w2 = (rng.normal(size=(8, 8, 3, 3)) * 0.1).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    capsys.readouterr()
    assert cli(["compare", str(path), "--store", str(store), "--json", "--figure",
                str(tmp_path / "c.png"), "--scheduler", "threads"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_filters"] == 8 * 3 + 8 * 8 and out["n_layers"] == 2
    assert {g["grouping"] for g in out["groups"]} == {"task", "visual_category"}
    assert len(out["nearest_models"]) == 8
    assert (tmp_path / "c.png").exists()


def test_layer_quality_percentiles(db):
    from scipy.stats import percentileofscore

    from filtershift.compare import QUALITY, layer_table, model_dataset
    from filtershift.stats.quality import layer_quality

    w, recs, mods, ds = db
    model = fake_model(9, layers=((16, 8), (16, 16), (8, 16)))
    model.layers[1].weights[: 200] = 0.0  # a sparse layer
    with dask.config.set(scheduler="threads"):
        result = compare(model, ds, by=["task"])
        own = layer_quality(model_dataset(model))
        ref = layer_quality(ds)
    table = layer_table(result)
    assert list(table["layer"]) == [layer.name for layer in model.layers]
    for metric in QUALITY[:3]:
        np.testing.assert_allclose(table[metric], own[metric])
        want = [percentileofscore(ref[metric].dropna(), v, kind="mean") for v in own[metric]]
        np.testing.assert_allclose(table[f"{metric}_percentile"], want)
    assert table["sparsity"][1] == pytest.approx(200 / 256)
