"""The README's first command: `filtershift demo` runs the whole job on built-in data."""

import json

import numpy as np

import filtershift as fs
from filtershift.cli import main as cli


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--filters", "120000", "--models", "16", "--out", str(out), "--scheduler", "threads"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo-summary.json").read_text())
    ds = fs.open_store(out / "db.zarr")
    assert ds.sizes["filter"] == 120_000 == summary["info"]["n_filters"]
    truth = summary["truth"]
    assert truth["n_filters"] == 120_000
    # the planted degenerate records are in the store with their exact planted sparsity
    recs = fs.records(ds)
    w = ds["weights"].values
    planted = [d for d in truth["degenerate"] if d["kind"] == "sparse"]
    assert planted
    for d in planted:
        r = recs[(recs.model_id == d["model_id"]) & (recs.conv_depth == d["conv_depth"])].iloc[0]
        zeros = np.all(w[r.start:r.stop] == 0, axis=1).mean()
        assert zeros == d["sparsity"]
    index = out / "report" / "latest" / "index.html"
    assert index.exists() and "report" in printed
    results = json.loads((out / "report" / "latest" / "results.json").read_text())
    assert results["basis"]["explained_variance_ratio"]
