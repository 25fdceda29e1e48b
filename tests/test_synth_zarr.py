"""``synthesize(..., format="zarr")`` writes the store directly: the store equals the conversion of the synthesized
``dataset.h5`` (every array bit for bit with zarr/numpy, the tables with pandas, the manifest), no HDF5 file is ever
written, and a SIGKILL mid-write leaves a store that refuses to open and that ``resume`` finishes to the same store.

Blocks and chunks are made small (``synth.BLOCK``, the default chunk size) so that a few tens of thousands of
filters span many chunks and generation blocks, with chunk, block and record boundaries all misaligned.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import zarr

import filtershift as fs
from filtershift import synth
from filtershift.cli import main
from filtershift.errors import IncompleteStoreError, InputError, StoreError
from filtershift.store import convert as convert_module
from filtershift.store import format as fmt
from filtershift.store.format import Location, read_table
from filtershift.synth import read_truth, synthesize, truth_path

BLOCK = 8192
CHUNK = 3000
N, MODELS, SEED = 40_000, 5, 3
COMBOS = {
    "v1.0": {},
    "v0.1-shuffled-3x3-float16": {"style": "v0.1", "meta_format": "fixed", "shuffle_records": True,
                                  "layout": "3x3", "dtype": "float16"},
    "v1.0-shuffled-fixed-float64": {"shuffle_records": True, "meta_format": "fixed", "dtype": "float64"},
    "v0.1-csv": {"style": "v0.1", "meta_format": "csv"},
}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def small_blocks():
    with pytest.MonkeyPatch.context() as m:
        m.setattr(synth, "BLOCK", BLOCK)
        m.setattr(fmt, "DEFAULT_CHUNK_FILTERS", CHUNK)
        yield


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Per combination: (direct store, conversion of the synthesized dataset.h5)."""
    out = {}
    for name, kw in COMBOS.items():
        d = tmp_path_factory.mktemp(name)
        h5 = synthesize(d / "db.h5", n_filters=N, n_models=MODELS, seed=SEED, **kw)
        ref = convert_module.convert(h5, d / "ref.zarr", trust_pickle=kw.get("meta_format") == "fixed",
                                     provenance_kind="synth")
        out[name] = synthesize(d / "db.zarr", n_filters=N, n_models=MODELS, seed=SEED, format="zarr", **kw), ref
    return out


def _manifest(db) -> dict:
    return json.loads((Path(db) / "zarr.json").read_text())["attributes"]["filtershift"]


def _files(db) -> dict:
    """Relative path -> bytes of every file of a store but its root ``zarr.json`` (which holds the manifest)."""
    db = Path(db)
    return {str(p.relative_to(db)): p.read_bytes() for p in sorted(db.rglob("*"))
            if p.is_file() and p != db / "zarr.json"}


def assert_same_store(db, ref, *, same_source: bool = True) -> None:
    """``db`` holds the same files as ``ref``, byte for byte, but the root ``zarr.json``, whose manifest may differ
    only in the provenance's time (and the source's name, size and checksum unless ``same_source``); the weights
    read with zarr are the same bits and the tables read with pandas are equal."""
    got, want = _manifest(db), _manifest(ref)
    assert got["state"] == want["state"] == "complete"
    files, expected = _files(db), _files(ref)
    assert sorted(files) == sorted(expected)
    assert [name for name in files if files[name] != expected[name]] == []
    root = [json.loads((Path(d) / "zarr.json").read_text()) for d in (db, ref)]
    for r in root:
        r["attributes"].pop(fmt.MANIFEST_KEY)
    assert root[0] == root[1]
    n = want["n_filters"]
    weights = [zarr.open_group(str(d), mode="r")["weights"][:n] for d in (db, ref)]
    assert weights[0].dtype == weights[1].dtype == np.float32
    assert weights[0].tobytes() == weights[1].tobytes()
    for name in ("records", "models"):
        pd.testing.assert_frame_equal(read_table(Location.of(db), name, got["version"]),
                                      read_table(Location.of(ref), name, want["version"]))
    drop = ("time",) if same_source else ("time", "source", "size", "sha256")
    for m in (got, want):
        for entry in m["provenance"]:
            for key in drop:
                entry.pop(key)
    assert got == want
    assert fs.verify(db).ok


@pytest.mark.parametrize("combo", list(COMBOS))
def test_direct_store_equals_the_conversion_of_the_h5(stores, combo):
    db, ref = stores[combo]
    assert_same_store(db, ref, same_source=False)
    entry = _manifest(db)["provenance"][0]
    truth = truth_path(db).read_bytes()
    assert entry["kind"] == "synth"
    assert (entry["source"], entry["size"], entry["sha256"]) == \
        (truth_path(db).name, len(truth), hashlib.sha256(truth).hexdigest())
    want = json.loads(truth_path(Path(db).with_name("db.h5")).read_text())
    want["settings"]["format"] = "zarr"
    assert read_truth(db) == want


def test_no_hdf5_file_is_written(tmp_path, monkeypatch):
    """The directory (also the working directory) is looked at after every chunk and at the end."""
    monkeypatch.chdir(tmp_path)
    seen = []
    save = convert_module._Writer._save_progress

    def look(self):
        save(self)
        seen.append(sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if h5py.is_hdf5(p)))

    monkeypatch.setattr(convert_module._Writer, "_save_progress", look)
    synthesize(tmp_path / "db.zarr", n_filters=N, n_models=MODELS, seed=SEED, format="zarr", **COMBOS["v1.0"])
    assert len(seen) > N // CHUNK
    assert seen == [[]] * len(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.zarr", "db.zarr.truth.json"]


KILLER = """
import os, signal, sys
from filtershift import synth
from filtershift.store import convert, format
synth.BLOCK, format.DEFAULT_CHUNK_FILTERS = {block}, {chunk}
save, calls = convert._Writer._save_progress, []
def killing(self):
    save(self)
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
convert._Writer._save_progress = killing
synth.synthesize(sys.argv[1], n_filters={n}, n_models={models}, seed={seed}, format="zarr")
"""


def test_sigkill_mid_write_then_resume_or_overwrite(stores, tmp_path):
    """Killed after three chunks: the store says ``converting`` and refuses to open, there is no truth file, a plain
    rerun says how to go on; ``resume=True`` and ``overwrite=True`` both give the uninterrupted store."""
    db = tmp_path / "db.zarr"
    env = {**os.environ, "FILTERSHIFT_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = KILLER.format(block=BLOCK, chunk=CHUNK, n=N, models=MODELS, seed=SEED)
    proc = subprocess.run([sys.executable, "-c", code, str(db)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert _manifest(db)["state"] == "converting"
    assert json.loads((db / fmt.PROGRESS_FILE).read_text())["done"] == 3
    assert not truth_path(db).exists()
    with pytest.raises(IncompleteStoreError):
        fs.open_store(db)
    with pytest.raises(InputError, match="resume=True"):
        synthesize(db, n_filters=N, n_models=MODELS, seed=SEED, format="zarr")
    with pytest.raises(StoreError, match="another source"):
        synthesize(db, n_filters=N, n_models=MODELS, seed=SEED + 1, format="zarr", resume=True)
    again = tmp_path / "copy" / "db.zarr"
    shutil.copytree(db, again)
    synthesize(db, n_filters=N, n_models=MODELS, seed=SEED, format="zarr", resume=True)
    synthesize(again, n_filters=N, n_models=MODELS, seed=SEED, format="zarr", overwrite=True)
    reference = stores["v1.0"][0]
    assert_same_store(db, reference)
    assert_same_store(again, db)
    assert read_truth(db) == read_truth(reference)


def test_resume_of_a_complete_store(stores, tmp_path, capsys):
    """Same arguments: left alone (exit 0, says so); other arguments: refused, even when only the seed differs."""
    db = tmp_path / "db.zarr"
    shutil.copytree(stores["v1.0"][0], db)
    shutil.copy(truth_path(stores["v1.0"][0]), truth_path(db))
    weights = {p: p.stat().st_mtime_ns for p in (db / "weights").rglob("*")}
    args = ["synth", str(db), "--filters", str(N), "--models", str(MODELS), "--seed", str(SEED), "--format", "zarr"]
    assert main(args + ["--resume"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (db / "weights").rglob("*")} == weights
    assert_same_store(db, stores["v1.0"][0])
    with pytest.raises(StoreError, match="sha256"):
        synthesize(db, n_filters=N, n_models=MODELS, seed=SEED + 10, format="zarr", resume=True)
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


def test_option_errors(tmp_path):
    with pytest.raises(InputError, match="format='zarr'"):
        synthesize(tmp_path / "a.h5", n_filters=N, n_models=MODELS, resume=True)
    with pytest.raises(InputError, match="exclude each other"):
        synthesize(tmp_path / "a.zarr", n_filters=N, n_models=MODELS, format="zarr", resume=True, overwrite=True)
    assert list(tmp_path.iterdir()) == []
