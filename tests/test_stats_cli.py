"""The pca and drift commands and the example script on a small synthetic store, checked against numpy on the
store read with plain zarr + pandas, and against the generator's planted order."""

import json
import pathlib
import runpy
import sys

import numpy as np
import pytest
import zarr
from test_stats_analysis import ref_drift, ref_pca

from filtershift.cli import main
from filtershift.store.format import Location, read_table
from filtershift.synth import read_truth, synthesize

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stats") / "s.zarr"
    synthesize(path, n_filters=60_000, n_models=16, seed=3, format="zarr")
    return path


def _plain(path):
    g = zarr.open_group(str(path), mode="r")
    m = g.attrs["filtershift"]
    n, v = m["n_filters"], m["version"]
    records = read_table(Location.of(path), "records", v)
    models = read_table(Location.of(path), "models", v)
    return g["weights"][:n], records, models


def test_pca_json(store, capsys):
    assert main(["pca", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    w, _, _ = _plain(store)
    mean, comps, _, ratio = ref_pca(w)
    np.testing.assert_allclose(out["mean"], mean, atol=1e-9)
    np.testing.assert_allclose(out["components"], comps, atol=1e-6)
    np.testing.assert_allclose(out["explained_variance_ratio"], ratio, rtol=1e-6)


def test_drift_json_and_planted_order(store, capsys):
    assert main(["drift", str(store), "--by", "Task", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    w, records, models = _plain(store)
    task = models.set_index("model_id")["Task"].map(lambda t: "Segmentation" if "Segmentation" in t else t)
    labels = np.repeat(records["model_id"].map(task).to_numpy(), records["n"].to_numpy())
    np.testing.assert_allclose(out["matrix"], ref_drift(w, labels, out["labels"]), rtol=1e-6)
    assert out["n_filters"] == [int((labels == g).sum()) for g in out["labels"]]
    assert out["metric"] == "kl_sym" and out["bins"] == 70
    truth = read_truth(store)["shifts"]["task"]
    row = dict(zip(out["labels"], out["matrix"][out["labels"].index(truth["reference"])]))
    assert sorted(truth["order"], key=row.get) == truth["order"]


def test_drift_combined_and_text(store, capsys):
    assert main(["drift", str(store), "--by", "Task", "--by", "visual_category", "--metric", "js",
                 "--bins", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(" / " in lab for lab in out["labels"]) and out["by"] == ["task", "visual_category"]
    assert out["metric"] == "js" and np.allclose(np.diag(out["matrix"]), 0)
    assert main(["drift", str(store), "--by", "depth"]) == 0
    assert "[0.0, 0.1]" in capsys.readouterr().out
    assert main(["drift", str(store), "--by", "nonsense"]) == 2
    assert "unknown grouping" in capsys.readouterr().err


def test_example_script(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["shift_analysis.py", str(store), "--out", str(tmp_path), "--n-boot", "20"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "examples" / "shift_analysis.py"), run_name="__main__")
    assert exc.value.code == 0
    assert (tmp_path / "eigenimages.png").stat().st_size > 1000
    assert (tmp_path / "drift.png").stat().st_size > 1000
    assert "natural" in capsys.readouterr().out
