"""Growing a store: atomic per-model appends, duplicates, crash safety, and snapshots seen by readers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr
from sources import make_meta, random_weights, write_source

import filtershift as fs
from filtershift.errors import InputError, StoreError
from filtershift.ingest.model import LayerFilters, ModelFilters
from filtershift.store.append import add_models, create_empty
from filtershift.store.convert import convert

TESTS = os.path.dirname(__file__)


def fake_model(seed: int, layers=((16, 3), (32, 16), (32, 32)), name=None) -> ModelFilters:
    """A model as the readers return it, built independently from random weights."""
    rng = np.random.default_rng(seed)
    out = []
    for depth, (o, i) in enumerate(layers):
        w = rng.normal(size=(o * i, 9)).astype(np.float32)
        out.append(LayerFilters(name=f"conv{depth}", conv_depth=depth,
                                conv_depth_norm=depth / max(len(layers) - 1, 1), in_channels=i,
                                out_channels=o, groups=1, kernel=(3, 3), weights=w))
    filters = np.concatenate([layer.weights for layer in out])
    return ModelFilters(source=name or f"model{seed}.onnx", kind="onnx",
                        sha256=hashlib.sha256(filters.tobytes()).hexdigest(),
                        meta={"producer": "pytorch", "op_set": 17, "Conv": len(layers)}, layers=out)


def base_store(tmp_path, chunk=100):
    sizes = [37, 120, 5, 300]
    w = random_weights(sum(sizes))
    src = write_source(tmp_path / "src.h5", w, make_meta(sizes))
    convert(src, tmp_path / "db.zarr", chunk_filters=chunk)
    return tmp_path / "db.zarr", w


def test_append_to_converted_store(tmp_path):
    db, w = base_store(tmp_path)
    models = [fake_model(1), fake_model(2, layers=((8, 4), (8, 8)))]
    meta = pd.DataFrame({"model": ["model1.onnx", "model2.onnx"], "Task": ["Classification", "Detection"],
                         "Visual Category": ["natural", "medical ct"], "Name": ["Tiny-A", "Tiny-B"]})
    result = add_models(db, models, meta=meta)
    assert result.added == [2, 3] and result.skipped == []
    ds = fs.open_store(db)
    recs, mods = fs.records(ds), fs.models(ds)
    got = ds["weights"].values
    np.testing.assert_array_equal(got[:len(w)], w)
    for model_id, m in zip(result.added, models):
        r = recs[recs.model_id == model_id]
        assert list(r.layer) == [layer.name for layer in m.layers]
        assert list(r.out_channels) == [layer.out_channels for layer in m.layers]
        for (_, row), layer in zip(r.iterrows(), m.layers):
            np.testing.assert_array_equal(got[row.start:row.stop], layer.weights)
    row = mods.set_index("model_id").loc[3]
    assert row["Task"] == "Detection" and row["producer"] == "pytorch" and row["weights_sha256"] == models[1].sha256
    assert fs.verify(db).ok
    assert fs.store.verify.info(db)["provenance"][-1]["model_id"] == 3


def test_duplicate_weights_are_a_no_op(tmp_path, capsys):
    db, _ = base_store(tmp_path)
    add_models(db, [fake_model(1)])
    before = fs.store.verify.info(db)
    again = add_models(db, [fake_model(1, name="copy.onnx")])
    assert again.added == [] and again.skipped == ["copy.onnx"]
    assert "already stored as model" in capsys.readouterr().out
    assert fs.store.verify.info(db)["version"] == before["version"]


def test_new_store_and_refusals(tmp_path):
    db = tmp_path / "new.zarr"
    add_models(db, [fake_model(3)])
    assert fs.open_store(db).sizes["filter"] == fake_model(3).filters().shape[0]
    empty = fake_model(4)
    empty.layers = []
    with pytest.raises(InputError, match="no 3x3 convolutions"):
        add_models(db, [empty])
    bad = fake_model(5)
    bad.layers[0].weights[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN/Inf"):
        add_models(db, [bad])
    assert fs.verify(db).ok
    with pytest.raises(StoreError, match="already exists"):
        create_empty(db)


def test_second_writer_is_refused(tmp_path):
    db, _ = base_store(tmp_path)
    lock = db / ".filtershift-lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                    "time": "now"}))
        with pytest.raises(StoreError, match="another writer"):
            add_models(db, [fake_model(1)])
    finally:
        holder.kill()
        holder.wait()
    add_models(db, [fake_model(1)])  # the holder died: its lock is stale and taken over
    assert not lock.exists()


APPENDER = """
import sys, time, numpy as np
sys.path.insert(0, {tests!r})
from test_append import fake_model
from filtershift.store.append import add_models
for seed in range({n}):
    add_models({db!r}, [fake_model(100 + seed, layers=((64, 32), (64, 64)))])
"""


def test_crash_mid_append_leaves_previous_snapshot_and_rerun_completes(tmp_path):
    db, w = base_store(tmp_path, chunk=1000)
    reference = tmp_path / "ref.zarr"
    add_models(reference, [fake_model(100 + s, layers=((64, 32), (64, 64))) for s in range(6)])
    rng = np.random.default_rng()
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", APPENDER.format(
            tests=TESTS, n=6, db=str(db))])
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        (db / ".filtershift-lock").unlink(missing_ok=True)
        ds = fs.open_store(db)  # always opens: the last committed snapshot
        assert fs.verify(db).ok
        recs = fs.records(ds)
        assert int(recs.n.sum()) == ds.sizes["filter"]
    subprocess.run([sys.executable, "-c", APPENDER.format(
        tests=TESTS, n=6, db=str(db))], check=True)
    got = fs.open_store(db)["weights"].values
    np.testing.assert_array_equal(got[:len(w)], w)
    np.testing.assert_array_equal(got[len(w):], fs.open_store(reference)["weights"].values)
    assert len(fs.models(fs.open_store(db))) == 2 + 6


def test_root_column_resized_but_never_written_by_a_killed_append(tmp_path):
    """A kill between a root column's resize and its chunk write (met by the crash loop in CI): the committed
    snapshot (no filters) verifies, and the re-run writes the chunk even where the new rows equal the fill value
    (model ids 0 in `model` and `model_id`: zarr reads an absent chunk as 0, which once let the re-run skip the
    write)."""
    db, ref = tmp_path / "db.zarr", tmp_path / "ref.zarr"
    create_empty(db, chunk_filters=1000)
    add_models(ref, [fake_model(7)])
    want_group = zarr.open_group(str(ref), mode="r")
    group = zarr.open_group(str(db), mode="r+")
    for key in ("model", "model_id", "conv_depth", "layer"):
        group[key].resize(want_group[key].shape)    # what the killed append did before writing the chunk
    report = fs.verify(db)
    assert report.ok, report.problems
    assert fs.open_store(db).sizes["filter"] == 0
    add_models(db, [fake_model(7)])
    assert fs.verify(db).ok
    got = zarr.open_group(str(db), mode="r")
    for key in sorted(want_group.array_keys()):
        assert got[key].nchunks_initialized == got[key].nchunks, key
        np.testing.assert_array_equal(got[key][:], want_group[key][:], err_msg=key)


def test_reader_during_append_sees_a_whole_snapshot(tmp_path):
    db, w = base_store(tmp_path, chunk=1000)
    snapshots = {}
    totals = []
    proc = subprocess.Popen([sys.executable, "-c", APPENDER.format(
        tests=TESTS, n=5, db=str(db))])
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            ds = fs.open_store(db)
            n = ds.sizes["filter"]
            totals.append((n, float(ds["weights"].sum(dtype="f8").compute())))
    finally:
        proc.wait()
    final = fs.open_store(db)
    recs = fs.records(final)
    # the sum of every committed snapshot, computed independently from the final store
    for version_n in sorted(set(recs.groupby("model_id").n.sum().cumsum())):
        snapshots[int(version_n)] = float(final["weights"][:version_n].sum(dtype="f8").compute())
    assert totals, "the reader never ran"
    for n, total in totals:
        assert n in snapshots, f"a reader saw {n} filters, not a committed snapshot"
        assert total == pytest.approx(snapshots[n], rel=1e-12, abs=1e-9)


def test_extract_cli_with_meta_csv(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from filtershift.cli import main as cli

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        w1 = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
        w2 = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w1"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="second")],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 5, 5])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
        paths.append(tmp_path / f"net{i}.onnx")
        onnx.save(helper.make_model(graph), str(paths[-1]))
    (tmp_path / "models.csv").write_text("model,Name,Task,Visual Category\n"
                                         "net0.onnx,Tiny,Classification,natural\n"
                                         "net1.onnx,Tiny2,Detection,\n")
    db = tmp_path / "db.zarr"
    assert cli(["extract", *map(str, paths), "--store", str(db), "--meta", str(tmp_path / "models.csv")]) == 0
    ds = fs.open_store(db)
    mods = fs.models(ds).set_index("model_id")
    assert list(mods["Name"]) == ["Tiny", "Tiny2"] and mods["Visual Category"].isna().tolist() == [False, True]
    assert ds["visual_category"].attrs["labels"] == ["natural", "unknown"]
    recs = fs.records(ds)
    assert list(recs["layer"]) == ["first", "second"] * 2 and list(recs["n"]) == [12, 24] * 2
    assert cli(["extract", str(paths[0]), "--store", str(db)]) == 0
    assert "already stored" in capsys.readouterr().out
