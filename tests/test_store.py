"""The store: dataset.h5 → Zarr round trips, reordering, resume after SIGKILL, bad input, laziness, integrity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import dask
import h5py
import numpy as np
import pandas as pd
import pytest
import zarr
from dask.callbacks import Callback
from sources import make_meta, random_weights, write_source

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import IncompleteStoreError, InputError, StoreError
from filtershift.store import verify
from filtershift.store.convert import convert
from filtershift.store.format import Location, read_table

SIZES = [37, 120, 5, 300, 64, 211, 1, 90, 150, 22]


def source(tmp_path, name="src.h5", sizes=SIZES, **kw):
    style = kw.pop("style", "v1.0")
    shuffle = kw.pop("shuffle", None)
    w = kw.pop("weights", None)
    w = random_weights(sum(sizes), seed=len(name)) if w is None else w
    meta = make_meta(sizes, style=style, shuffle=shuffle)
    return write_source(tmp_path / name, w, meta, **kw), w, meta


def expected_rows(meta: pd.DataFrame, weights: np.ndarray) -> list[np.ndarray]:
    """Each record's filters, by an independent reading of filter_ids."""
    out = []
    for ids in meta["filter_ids"]:
        if isinstance(ids, str):
            a, b = map(int, ids.split(":"))
            out.append(weights[a:b + 1])
        else:
            out.append(weights[np.asarray(ids)])
    return out


@pytest.mark.parametrize("style,meta_format,layout,key", [
    ("v1.0", "table", "flat", "filters"),
    ("v1.0", "fixed", "3x3", "filters"),
    ("v0.1", "fixed", "flat", "filter"),
    ("v1.0", "table", "3x3", "filter"),
])
def test_round_trip_every_value(tmp_path, style, meta_format, layout, key):
    src, w, meta = source(tmp_path, style=style, meta_format=meta_format, layout=layout, key=key)
    convert(src, tmp_path / "db.zarr", chunk_filters=64, trust_pickle=(meta_format == "fixed"))
    ds = fs.open_store(tmp_path / "db.zarr")
    recs, mods = fs.records(ds), fs.models(ds)
    got = ds["weights"].values
    flat = meta.reset_index()
    for i, rows in enumerate(expected_rows(meta, w)):
        r = recs[(recs.model_id == flat.model_id[i]) & (recs.conv_depth == flat.conv_depth[i])].iloc[0]
        np.testing.assert_array_equal(got[r.start:r.stop], rows)
        assert r.conv_depth_norm == pytest.approx(flat.conv_depth_norm[i])
    category = "Visual Category" if style == "v1.0" else "Datatype"
    for col in ["Task", "Name", "model", "extra column", "total_filters", "3x3_filter_share", category,
                "Training-Dataset"]:
        want = flat.drop_duplicates("model_id").set_index("model_id")[col]
        have = mods.set_index("model_id")[col]
        for mid in want.index:
            if pd.isna(want[mid]):
                assert pd.isna(have[mid])
            else:
                assert have[mid] == want[mid], (col, mid)
    # per-filter coordinates agree with the records table
    rec = ds["record"].values
    assert np.array_equal(rec, np.repeat(recs.record.to_numpy(), recs.n.to_numpy()))
    assert np.array_equal(ds["model_id"].values, np.repeat(recs.model_id.to_numpy(), recs.n.to_numpy()))
    labels = ds["visual_category"].attrs["labels"]
    cats = mods.set_index("model_id")[category]
    assert list(ds["visual_category"].values[recs.start]) == list(cats[recs.model_id])
    assert set(cats) <= set(labels)


def test_reorders_unsorted_and_scattered_records(tmp_path):
    perm = np.random.default_rng(3).permutation(len(SIZES))
    src, w, meta = source(tmp_path, style="v0.1", shuffle=perm, meta_format="fixed")
    # scatter one record: swap two ids between records 0 and 1 so neither is contiguous
    meta = meta.copy()
    a, b = list(meta["filter_ids"].iloc[0]), list(meta["filter_ids"].iloc[1])
    a[0], b[0] = b[0], a[0]
    meta.iat[0, meta.columns.get_loc("filter_ids")] = a
    meta.iat[1, meta.columns.get_loc("filter_ids")] = b
    write_source(src, w, meta, key="filter", meta_format="fixed")
    convert(src, tmp_path / "db.zarr", chunk_filters=50, trust_pickle=True)
    ds = fs.open_store(tmp_path / "db.zarr")
    recs = fs.records(ds)
    assert list(zip(recs.model_id, recs.conv_depth)) == sorted(zip(recs.model_id, recs.conv_depth))
    fid = ds["filter_id"].values
    np.testing.assert_array_equal(ds["weights"].values, w[fid])
    flat = meta.reset_index()
    for i, ids in enumerate(flat["filter_ids"]):
        r = recs[(recs.model_id == flat.model_id[i]) & (recs.conv_depth == flat.conv_depth[i])].iloc[0]
        assert sorted(fid[r.start:r.stop]) == sorted(ids)


def test_contiguous_but_unsorted_records_need_no_reordering(tmp_path):
    perm = np.random.default_rng(5).permutation(len(SIZES))
    src, w, meta = source(tmp_path, shuffle=perm)
    convert(src, tmp_path / "db.zarr", chunk_filters=64)
    ds = fs.open_store(tmp_path / "db.zarr")
    assert "filter_id" not in ds.coords
    np.testing.assert_array_equal(ds["weights"].values, w)
    recs = fs.records(ds)
    assert (recs.start.diff().dropna() > 0).all()


def test_open_is_lazy(tmp_path):
    src, _, _ = source(tmp_path)
    convert(src, tmp_path / "db.zarr", chunk_filters=64)
    calls = []

    class Count(Callback):
        def _start(self, dsk):
            calls.append(len(dsk))

    with Count():
        ds = fs.open_store(tmp_path / "db.zarr")
        sub = fs.select(ds, task="Classification", visual_category=["natural", "medical ct"])
        assert sub["weights"].chunks is not None
    assert calls == []
    with Count():
        total = sub["weights"].sum().compute()
    assert calls and np.isfinite(total)


def test_select_matches_numpy(tmp_path):
    src, w, meta = source(tmp_path)
    convert(src, tmp_path / "db.zarr", chunk_filters=64)
    ds = fs.open_store(tmp_path / "db.zarr")
    sub = fs.select(ds, Task="Segmentation")  # the cleaning rule folds both segmentation variants
    flat = meta.reset_index()
    want = np.concatenate([rows for rows, task in zip(expected_rows(meta, w), flat["Task"])
                           if "Segmentation" in task])
    np.testing.assert_array_equal(sub["weights"].values, want)
    with pytest.raises(InputError, match="no label"):
        fs.select(ds, task="Nope")


def test_label_rules_configurable(tmp_path):
    src, _, _ = source(tmp_path)
    convert(src, tmp_path / "db.zarr", chunk_filters=64)
    raw = fs.open_store(tmp_path / "db.zarr", label_rules=[])
    assert "Semantic Segmentation" in raw["task"].attrs["labels"]
    clean = fs.open_store(tmp_path / "db.zarr")
    assert "Semantic Segmentation" not in clean["task"].attrs["labels"]
    assert "Segmentation" in clean["task"].attrs["labels"]


def test_info_and_verify_cli(tmp_path, capsys):
    src, w, _ = source(tmp_path)
    assert cli(["convert", str(src), str(tmp_path / "db.zarr"), "--chunk-filters", "100"]) == 0
    capsys.readouterr()
    assert cli(["info", str(tmp_path / "db.zarr"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_filters"], out["n_models"], out["n_records"]) == (len(w), len(SIZES) // 2, len(SIZES))
    assert out["provenance"][0]["size"] == os.path.getsize(src)
    assert cli(["verify", str(tmp_path / "db.zarr")]) == 0


def test_flipped_byte_is_detected(tmp_path, capsys):
    src, _, _ = source(tmp_path)
    db = tmp_path / "db.zarr"
    convert(src, db, chunk_filters=100)
    chunk = db / "weights" / "c" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    data[17] ^= 0x40
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="'weights' chunk 3"):
        fs.open_store(db)["weights"].sum().compute()
    report = fs.verify(db)
    assert not report.ok and "chunk 3" in report.problems[0]
    assert cli(["verify", str(db)]) == 1
    # truncated and emptied chunk files (read through the memory-mapped path) are errors too, not crashes
    for size in (len(data) // 2, 0):
        chunk.write_bytes(bytes(data[:size]))
        with pytest.raises(StoreError, match="'weights' chunk 3"):
            fs.open_store(db)["weights"].sum().compute()


def test_nonfinite_policies(tmp_path):
    w = random_weights(sum(SIZES))
    w[5, 2], w[400, 0], w[401, 8] = np.nan, np.inf, -np.inf
    src, _, _ = source(tmp_path, weights=w)
    with pytest.raises(InputError, match="3 NaN/Inf"):
        convert(src, tmp_path / "db.zarr", chunk_filters=64)
    assert not (tmp_path / "db.zarr").exists()
    convert(src, tmp_path / "db.zarr", chunk_filters=64, nonfinite="zero")
    got = fs.open_store(tmp_path / "db.zarr")["weights"].values
    assert np.isfinite(got).all() and got[5, 2] == 0 and got[5, 1] == w[5, 1]
    assert verify.info(tmp_path / "db.zarr")["n_nonfinite"] == 3


def test_float16_and_float64_sources(tmp_path):
    for dtype in ("float16", "float64"):
        src, w, _ = source(tmp_path, name=f"{dtype}.h5", weights=random_weights(sum(SIZES), dtype=dtype))
        convert(src, tmp_path / f"{dtype}.zarr", chunk_filters=64)
        got = fs.open_store(tmp_path / f"{dtype}.zarr")["weights"].values
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, w.astype(np.float32))


def _bad(tmp_path, **kw):
    return source(tmp_path, **kw)[0]


@pytest.mark.parametrize("case,match", [
    ("missing", "no such file"),
    ("not_hdf5", "not an HDF5 file"),
    ("no_filters", "no filter array"),
    ("no_meta", "no meta table"),
    ("bad_shape", "expected \\(N, 9\\)"),
    ("out_of_range", "outside"),
    ("overlap", "share filter ids"),
    ("unassigned", "belong to no record"),
    ("duplicate", "duplicate \\(model_id, conv_depth\\)"),
    ("pickle", "pickled Python objects"),
])
def test_bad_input_is_refused_and_writes_nothing(tmp_path, case, match):
    n = sum(SIZES)
    meta = make_meta(SIZES)
    src = tmp_path / "src.h5"
    if case == "missing":
        src = tmp_path / "nope.h5"
    elif case == "not_hdf5":
        src.write_text("model_id,conv_depth\n")
    elif case == "no_filters":
        write_source(src, random_weights(n), meta, key="weights")
    elif case == "no_meta":
        write_source(src, random_weights(n), None)
    elif case == "bad_shape":
        with h5py.File(src, "w") as h:
            h["filters"] = np.zeros((n, 25), "f4")
        meta.to_hdf(src, key="meta", format="table")
    else:
        fids = list(meta["filter_ids"])
        if case == "out_of_range":
            fids[-1] = f"{n - 22}:{n + 5}"
        elif case == "overlap":
            fids[1] = "30:156"
        elif case == "unassigned":
            fids[-1] = f"{n - 22}:{n - 2}"
        meta = meta.assign(filter_ids=fids)
        if case == "duplicate":
            meta = meta.reset_index()
            meta.loc[1, "conv_depth"] = 0
            meta = meta.set_index(["model_id", "conv_depth", "conv_depth_norm"])
        write_source(src, random_weights(n), meta, meta_format="fixed" if case == "pickle" else "table")
    with pytest.raises(InputError, match=match) as err:
        convert(src, tmp_path / "db.zarr")
    assert str(src.name) in str(err.value)
    assert not (tmp_path / "db.zarr").exists()


def test_unassigned_count_is_reported(tmp_path):
    n = sum(SIZES)
    meta = make_meta(SIZES)
    fids = list(meta["filter_ids"])
    fids[-1] = f"{n - 22}:{n - 3}"
    write_source(tmp_path / "src.h5", random_weights(n), meta.assign(filter_ids=fids))
    with pytest.raises(InputError, match="2 filter\\(s\\) belong to no record"):
        convert(tmp_path / "src.h5", tmp_path / "db.zarr")


def test_destination_rules(tmp_path):
    src, _, _ = source(tmp_path)
    db = tmp_path / "db.zarr"
    convert(src, db, chunk_filters=64)
    before = fs.open_store(db)["weights"].values
    with pytest.raises(StoreError, match="already exists"):
        convert(src, db)
    np.testing.assert_array_equal(fs.open_store(db)["weights"].values, before)
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreError, match="not a filtershift store"):
        convert(src, other, overwrite=True)
    assert (other / "thesis.tex").exists()
    convert(src, db, chunk_filters=100, overwrite=True)
    assert verify.info(db)["chunk_filters"] == 100


def _tables(db):
    g = zarr.open_group(str(db), mode="r")
    v = g.attrs["filtershift"]["version"]
    return (read_table(Location.of(db), "records", v), read_table(Location.of(db), "models", v))


def test_resume_after_sigkill_gives_identical_store(tmp_path):
    sizes = [7000, 12000, 3000, 25000, 9000, 14000] * 6
    w = random_weights(sum(sizes), seed=11)
    src = write_source(tmp_path / "big.h5", w, make_meta(sizes))
    ref = tmp_path / "ref.zarr"
    convert(src, ref, chunk_filters=4096)
    rng = np.random.default_rng()
    killed_mid = 0
    for attempt in range(3):
        db = tmp_path / f"db{attempt}.zarr"
        code = (f"from filtershift.store.convert import convert; "
                f"convert({str(src)!r}, {str(db)!r}, chunk_filters=4096)")
        proc = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.time() + 60
        target = rng.uniform(0.05, 0.95)
        progress_file = db / ".filtershift-progress.json"
        while time.time() < deadline and proc.poll() is None:
            try:
                done = json.loads(progress_file.read_text())["done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= target * (len(w) / 4096):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (db / "zarr.json").exists() and \
                zarr.open_group(str(db), mode="r").attrs["filtershift"]["state"] != "complete":
            killed_mid += 1
            with pytest.raises(IncompleteStoreError, match="--resume"):
                fs.open_store(db)
        if db.exists():
            convert(src, db, chunk_filters=4096, resume=True)
        else:
            convert(src, db, chunk_filters=4096)
        np.testing.assert_array_equal(fs.open_store(db)["weights"].values, fs.open_store(ref)["weights"].values)
        for got, want in zip(_tables(db), _tables(ref)):
            pd.testing.assert_frame_equal(got, want)
        assert fs.verify(db).ok
    assert killed_mid >= 1


def test_store_readable_with_plain_zarr_and_pandas(tmp_path):
    src, w, meta = source(tmp_path)
    db = tmp_path / "db.zarr"
    convert(src, db, chunk_filters=64)
    records, models = _tables(db)
    g = zarr.open_group(str(db), mode="r")
    first = g["weights"][records.start[0]:records.stop[0]]
    np.testing.assert_array_equal(first, expected_rows(meta, w)[0])
    assert set(models.model_id) == set(meta.reset_index().model_id)
    for path in db.rglob("*"):
        if path.is_file():
            assert b"\x80\x04\x95" not in path.read_bytes()[:64]


def test_from_arrays_matches_open_store(tmp_path):
    src, w, meta = source(tmp_path)
    db = tmp_path / "db.zarr"
    convert(src, db, chunk_filters=64)
    ds = fs.open_store(db)
    mem = fs.from_arrays(w, fs.records(ds)[["model_id", "conv_depth", "conv_depth_norm", "n"]],
                         fs.models(ds), chunk_filters=64)
    for name in ["weights", "record", "model_id", "conv_depth", "task", "visual_category"]:
        np.testing.assert_array_equal(mem[name].values, ds[name].values)
    with dask.config.set(scheduler="sync"):
        assert float(mem["weights"].sum()) == pytest.approx(float(w.sum(dtype=np.float64)), rel=1e-5)
