"""Store schema 2 (docs/format.md): plain xarray opens it without warnings and shows the tables; open_store reads
schema 1 and 2 alike; every chunk is written and an absent one is an error; appends keep a snapshot for plain
readers too; ``filtershift upgrade`` migrates a schema-1 store atomically and resumably (killed at every step,
then run again), locally and on S3; verify checks the schema-2 tables.

References are computed independently: the weights from the HDF5 source with h5py, the tables from the schema-1
store's Parquet files with pandas."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from sources import make_meta, random_weights, reordered_meta, write_source
from test_append import fake_model

import filtershift as fs
from filtershift.cli import main
from filtershift.errors import StoreError
from filtershift.store import format as fmt
from filtershift.store.append import add_models, create_empty
from filtershift.store.convert import convert
from filtershift.store.upgrade import STEPS, upgrade
from filtershift.store.verify import verify

C = 256
SIZES = [300, 500, 200, 400, 324, 100]          # 1824 filters, 8 chunks; chunk 1 all zeros (zarr skips it)
N = sum(SIZES)


@pytest.fixture(scope="session")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema2")
    w = random_weights(N, seed=21)
    w[C:2 * C] = 0.0
    src = write_source(tmp / "src.h5", w, make_meta(SIZES))
    with h5py.File(src, "r") as h:
        weights = h["filters"][:]                 # the reference weights, read without filtershift
    s1 = tmp / "s1.zarr"
    convert(src, s1, chunk_filters=C, schema=1)
    s2 = tmp / "s2.zarr"
    convert(src, s2, chunk_filters=C)
    tables = {name: pd.read_parquet(s1 / "tables" / f"{name}-v1.parquet") for name in ("records", "models")}
    return src, weights, s1, s2, tables


def schema(db) -> int:
    return json.loads((db / "zarr.json").read_text())["attributes"]["filtershift"]["schema_version"]


def plain(series: pd.Series) -> np.ndarray:
    """What xarray shows for a table column: numbers as floats with NaN for missing, strings with "" for missing."""
    if pd.api.types.is_numeric_dtype(series):
        return series.astype("float64").to_numpy(na_value=np.nan)
    return series.astype(object).where(series.notna(), "").astype(str).to_numpy()


def assert_plain_view(ds: xr.Dataset, tables: dict, weights: np.ndarray) -> None:
    np.testing.assert_array_equal(ds["weights"].values, weights)
    assert ds["weights"].dims == ("filter", "k")
    for column in tables["records"]:
        assert ds[column].dims == ("record",)
        np.testing.assert_array_equal(plain(pd.Series(ds[column].values)), plain(tables["records"][column]))
    for column in tables["models"]:
        name = "model" if column == "model_id" else f"model.{column}"
        assert ds[name].dims == ("model",)
        np.testing.assert_array_equal(plain(pd.Series(ds[name].values)), plain(tables["models"][column]))


def test_plain_xarray_opens_schema2_without_warnings(source):
    _, weights, _, s2, tables = source
    assert schema(s2) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kwargs in ({}, {"consolidated": True}, {"consolidated": False}):
            ds = xr.open_zarr(s2, **kwargs)
            assert ds.sizes == {"filter": N, "k": 9, "record": len(SIZES), "model": len(tables["models"])}
            assert_plain_view(ds, tables, weights)
    # the groups of the tables open on their own too, with the tables' own column names
    models = xr.open_zarr(s2, group="tables/v1/models", consolidated=False)
    assert set(models.variables) == set(tables["models"].columns)
    # a nullable integer is masked by its _FillValue, a missing string is listed in missing_rows
    g = zarr.open_group(s2, mode="r", use_consolidated=False)
    assert g["tables/v1/records/in_channels"].attrs["_FillValue"] == np.iinfo(np.int64).min
    missing = tables["models"]["Training-Dataset"].isna().to_numpy().nonzero()[0].tolist()
    assert missing and g["tables/v1/models/Training-Dataset"].attrs["missing_rows"] == missing


def test_open_store_reads_schema1_and_schema2_alike(source):
    _, weights, s1, s2, tables = source
    assert schema(s1) == 1 and schema(s2) == 2
    a, b = fs.open_store(s1), fs.open_store(s2)
    pd.testing.assert_frame_equal(fs.records(a), fs.records(b))
    pd.testing.assert_frame_equal(fs.models(a), fs.models(b))
    pd.testing.assert_frame_equal(fs.records(b).reset_index(drop=True)[list(tables["records"])],
                                  tables["records"], check_dtype=False)
    np.testing.assert_array_equal(a["weights"].values, weights)
    np.testing.assert_array_equal(b["weights"].values, weights)
    assert set(a.coords) == set(b.coords)
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert fmt.read_table(fmt.Location.of(s2), "models", 1).equals(tables["models"])
    assert fmt.read_table(fmt.Location.of(s2), "records", 1).equals(tables["records"])


def test_schema2_writes_every_chunk_and_an_absent_one_is_an_error(source, tmp_path):
    _, _, s1, s2, _ = source
    assert not (s1 / "weights" / "c" / "1").exists()           # schema 1: zarr skipped the all-zero chunk
    assert (s2 / "weights" / "c" / "1" / "0").exists()         # schema 2: written
    db = tmp_path / "db.zarr"
    shutil.copytree(s2, db)
    os.remove(db / "weights" / "c" / "1" / "0")                # its recorded sum is exactly 0.0, still an error
    assert fs.open_store(db).attrs["schema_version"] == 2
    with pytest.raises(StoreError, match=r"'weights' chunk 1 \(filters 256:512\) is missing"):
        fs.open_store(db)["weights"].compute()
    report = verify(db)
    assert not report.ok and any("chunk 1" in p and "missing" in p for p in report.problems)


@pytest.mark.parametrize("table,column", [("models", "Task"), ("records", "conv_depth")])
def test_an_absent_table_chunk_is_an_error_not_fill_values(source, table, column, tmp_path):
    """A table column's chunk deleted: opening the store names the column (zarr alone reads '' or 0 there)."""
    db = tmp_path / "db.zarr"
    shutil.copytree(source[3], db)                                # the schema-2 store
    shutil.rmtree(db / "tables" / "v1" / table / column / "c")
    where = rf"table tables/v1/{table}: column '{column}' has a chunk missing \(tables/v1/{table}/{column}/c/0;"
    with pytest.raises(StoreError, match=where):
        fs.open_store(db)
    report = verify(db)
    assert not report.ok and any(f"column '{column}' has a chunk missing" in p for p in report.problems)


@pytest.mark.parametrize("table,column", [("models", "Task"), ("records", "conv_depth")])
def test_verify_names_an_absent_chunk_of_a_root_table_array(source, table, column, tmp_path):
    """The root arrays plain xarray shows: a deleted chunk is reported as missing, not as a differing column."""
    db = tmp_path / "db.zarr"
    shutil.copytree(source[3], db)
    key = fmt.view_name(table, column)
    shutil.rmtree(db / key / "c")
    report = verify(db)
    assert not report.ok
    assert [p for p in report.problems if key in p] == [
        f"root array '{key}' (column '{column}' of the {table} table) has a chunk missing ({key}/c/0): plain xarray "
        "reads fill values there; run `filtershift upgrade` on the store to write it again"]
    assert key in upgrade(db).message() and verify(db).ok                      # the remedy it names repairs it


def test_append_keeps_a_snapshot_for_plain_readers(tmp_path, monkeypatch):
    db = tmp_path / "db.zarr"
    create_empty(db, chunk_filters=100)
    assert schema(db) == 2
    first = fake_model(1)
    add_models(db, [first])
    before = xr.open_zarr(db).load()
    n1 = before.sizes["filter"]
    commits = []
    real = fmt.write_manifest

    def crash_on_commit(group, manifest):
        commits.append(manifest["version"])
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(fmt, "write_manifest", crash_on_commit)
    second = fake_model(2, layers=((8, 4), (8, 8)))
    with pytest.raises(RuntimeError):
        add_models(db, [second])
    monkeypatch.setattr(fmt, "write_manifest", real)
    assert commits == [3]
    # the view arrays and weights already hold the next version; readers see the committed one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = xr.open_zarr(db).load()
    xr.testing.assert_identical(after.drop_attrs(), before.drop_attrs())
    assert fs.open_store(db).sizes["filter"] == n1
    assert verify(db).ok                                       # grown rows past the snapshot are not damage
    add_models(db, [second])                                   # run again: completes it
    ds = xr.open_zarr(db)
    want = np.concatenate([first.filters(), second.filters()])
    np.testing.assert_array_equal(ds["weights"].values, want)
    assert ds.sizes["record"] == 5 and ds.sizes["model"] == 2
    np.testing.assert_array_equal(ds["n"].values, [48, 512, 1024, 32, 64])
    np.testing.assert_array_equal(ds["stop"].values, np.cumsum([48, 512, 1024, 32, 64]))
    assert list(ds["model.model"].values) == ["model1.onnx", "model2.onnx"]
    g = zarr.open_group(db, mode="r", use_consolidated=False)
    assert sorted(g["tables"].group_keys()) == ["v2", "v3"]     # older versions removed after the commit
    assert verify(db).ok


def pristine(source, tmp_path, name="db.zarr"):
    db = tmp_path / name
    shutil.copytree(source[2], db)
    return db


def assert_same_numbers(db, source):
    _, weights, _, _, tables = source
    ds = fs.open_store(db)
    np.testing.assert_array_equal(ds["weights"].values, weights)
    pd.testing.assert_frame_equal(fs.records(ds).reset_index(drop=True)[list(tables["records"])],
                                  tables["records"], check_dtype=False)
    pd.testing.assert_frame_equal(fs.models(ds)[list(tables["models"])].reset_index(drop=True), tables["models"])
    return ds


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("step", STEPS[:-1])
def test_upgrade_interrupted_at_each_step_then_resumed(source, tmp_path, step):
    db = pristine(source, tmp_path)

    def stop(at):
        if at == step:
            raise Interrupted(at)

    with pytest.raises(Interrupted):
        upgrade(db, _hook=stop)
    committed = STEPS.index(step) >= STEPS.index("committed")
    assert schema(db) == (2 if committed else 1)
    assert_same_numbers(db, source)                            # opens at either schema, same numbers
    if committed:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_plain_view(xr.open_zarr(db), source[4], source[1])
    result = upgrade(db)
    assert result.upgraded == (not committed)
    written_before = STEPS.index(step) >= STEPS.index("materialised")
    assert result.chunks_written == (0 if written_before or committed else 1)
    assert schema(db) == 2
    assert (db / "weights" / "c" / "1" / "0").exists()
    assert not list((db / "tables").glob("*.parquet*"))
    assert not (db / ".filtershift-lock").exists()
    assert_same_numbers(db, source)
    assert verify(db).ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_plain_view(xr.open_zarr(db), source[4], source[1])


KILLER = """
import os, signal, sys
from filtershift.store.upgrade import upgrade
upgrade(sys.argv[1], _hook=lambda step: step == sys.argv[2] and os.kill(os.getpid(), signal.SIGKILL))
"""


@pytest.mark.parametrize("step", ["materialised", "view", "committed"])
def test_upgrade_killed_then_cli_finishes_it(source, tmp_path, step, capsys):
    db = pristine(source, tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(db), step], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (db / ".filtershift-lock").exists()                 # the dead writer's lock stays; the rerun takes it over
    assert_same_numbers(db, source)
    assert main(["upgrade", str(db)]) == 0
    out = capsys.readouterr().out
    assert ("already schema 2" in out) == (step == "committed"), out
    assert schema(db) == 2 and verify(db).ok
    assert_same_numbers(db, source)
    assert main(["upgrade", str(db)]) == 0
    assert "already schema 2" in capsys.readouterr().out


def test_upgrade_refuses_a_damaged_store_and_changes_nothing(source, tmp_path):
    db = pristine(source, tmp_path)
    os.remove(db / "weights" / "c" / "3" / "0")
    before = {p: p.read_bytes() for p in db.rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match=r"chunk 3 \(filters 768:1024\) is missing.*nothing was changed"):
        upgrade(db)
    assert {p: p.read_bytes() for p in db.rglob("*") if p.is_file()} == before


@pytest.mark.extended
def test_upgrade_on_s3(source, tmp_path):
    from _s3 import moto_s3

    src, weights, _, _, tables = source
    with moto_s3(tmp_path) as server:
        url = f"s3://{server.bucket}/db.zarr"
        convert(src, url, chunk_filters=C, schema=1)
        fsys = server.fs()
        assert not fsys.exists(f"{server.bucket}/db.zarr/weights/c/1/0")
        result = upgrade(url)
        assert result.upgraded and result.chunks_written == 1 and result.tables_removed == 2
        assert fsys.exists(f"{server.bucket}/db.zarr/weights/c/1/0")
        assert not fsys.glob(f"{server.bucket}/db.zarr/tables/*.parquet")
        ds = fs.open_store(url)
        assert ds.attrs["schema_version"] == 2
        np.testing.assert_array_equal(ds["weights"].values, weights)
        pd.testing.assert_frame_equal(fs.models(ds)[list(tables["models"])].reset_index(drop=True),
                                      tables["models"])
        assert verify(url).ok
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_plain_view(xr.open_zarr(fmt.Location.of(url).zarr_store(read_only=True)), tables, weights)


def test_verify_checks_schema2_tables_and_view(source, tmp_path):
    db = tmp_path / "db.zarr"
    shutil.copytree(source[3], db)
    assert verify(db).ok
    g = zarr.open_group(db, mode="r+", use_consolidated=False)
    task = g["model.Task"]
    task[0] = "Tampered"
    problems = verify(db).problems
    assert any("root array 'model.Task' differs" in p for p in problems), problems
    result = upgrade(db)                                       # on a schema-2 store: repairs the plain view
    assert not result.upgraded and any("model.Task" in p for p in result.view_repaired)
    assert verify(db).ok
    assert xr.open_zarr(db)["model.Task"].values[0] == source[4]["models"]["Task"][0]
    assert upgrade(db).view_repaired == []
    g["tables/v1/records/n"][0] = 1
    problems = verify(db).problems
    assert any("records column n differs from stop - start" in p for p in problems), problems
    with pytest.raises(StoreError, match="records column n differs"):
        fs.open_store(db)
    del g["weights"].attrs[fmt.ALL_CHUNKS_WRITTEN]
    assert any("lacks the attribute all_chunks_written" in p for p in verify(db).problems)


def test_schema1_store_keeps_schema1_on_append(source, tmp_path):
    db = pristine(source, tmp_path)
    model = fake_model(5, layers=((8, 4),))
    add_models(db, [model])
    assert schema(db) == 1
    assert (db / "tables" / "records-v2.parquet").exists() and not (db / "tables" / "zarr.json").exists()
    ds = fs.open_store(db)
    np.testing.assert_array_equal(ds["weights"].values, np.concatenate([source[1], model.filters()]))
    records = pd.read_parquet(db / "tables" / "records-v2.parquet")
    assert records["n"].tolist() == [*SIZES, 32]
    assert verify(db).ok


def test_upgrade_of_a_reordered_store_marks_filter_id(tmp_path):
    w = random_weights(600, seed=4)
    meta = reordered_meta([200, 250, 150], shuffle=[2, 0, 1])
    src = write_source(tmp_path / "r.h5", w, meta, key="filter", meta_format="fixed")
    db = tmp_path / "r.zarr"
    convert(src, db, chunk_filters=128, trust_pickle=True, schema=1)
    before = fs.open_store(db)
    ids = before["filter_id"].values
    assert sorted(ids.tolist()) == list(range(600)) and ids.tolist() != list(range(600))
    assert upgrade(db).upgraded
    after = fs.open_store(db)
    np.testing.assert_array_equal(after["filter_id"].values, ids)
    np.testing.assert_array_equal(after["weights"].values, w[ids])
    g = zarr.open_group(db, mode="r", use_consolidated=False)
    assert g["filter_id"].attrs[fmt.ALL_CHUNKS_WRITTEN] is True
    assert verify(db).ok
