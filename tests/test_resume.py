"""``convert --resume`` is idempotent: with no destination it converts, after a kill at any point it finishes, and a
complete store of the same conversion is left alone; another source or other settings are refused.

Every resumed store is compared with a plain conversion of the same source, array by array (zarr + numpy) and table
by table (pandas). Kills are placed deterministically: in a subprocess that SIGKILLs itself at a chosen function, or
in-process by raising a ``BaseException`` there (no ``except`` or ``finally`` in the converter catches it, so the
destination is left as a kill would leave it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from sources import make_meta, random_weights, write_source

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import IncompleteStoreError, InputError, StoreError
from filtershift.ingest import h5
from filtershift.store import convert as convert_module
from filtershift.store.convert import convert
from filtershift.store.format import Location, read_table

CHUNK = 2048
SIZES = [700, 1200, 300, 2500, 900, 1400] * 2  # 14,000 filters: 7 chunks
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PROGRESS = ".filtershift-progress.json"


class Killed(BaseException):
    """Stands for a SIGKILL in-process: nothing in the converter handles it."""


def _kill(*args, **kwargs):
    raise Killed()


def killed_convert(src, db, where: str, monkeypatch) -> None:
    """Convert ``src`` into ``db`` and 'kill' it when ``where`` (a function of store.convert, or ``Class.method``)
    is called."""
    owner, _, name = where.rpartition(".")
    with monkeypatch.context() as m:
        m.setattr(getattr(convert_module, owner) if owner else convert_module, name, _kill)
        with pytest.raises(Killed):
            convert(src, db, chunk_filters=CHUNK)


@pytest.fixture(scope="module", autouse=True)
def parse_in_process():
    """Parse the sources in this process, not in the memory-limited child (seconds each on a busy machine): the
    isolation is tested elsewhere and does not touch resume. The SIGKILL test's subprocess keeps it."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(convert_module, "open_source", functools.partial(h5.open_source, isolate=False))
        yield


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two different sources and a plain (uninterrupted, no --resume) conversion of the first."""
    d = tmp_path_factory.mktemp("resume")
    a = write_source(d / "a.h5", random_weights(sum(SIZES), seed=5), make_meta(SIZES))
    b = write_source(d / "b.h5", random_weights(sum(SIZES), seed=6), make_meta(SIZES))
    ref = d / "ref.zarr"
    convert(a, ref, chunk_filters=CHUNK)
    return a, b, ref


def _manifest(db: Path) -> dict:
    return json.loads((db / "zarr.json").read_text())["attributes"]["filtershift"]


def assert_same_store(db: Path, ref: Path) -> None:
    """Weights, tables and manifest of ``db`` equal those of ``ref``, read with zarr, numpy and pandas only."""
    got, want = _manifest(db), _manifest(ref)
    assert got["state"] == want["state"] == "complete"
    n = want["n_filters"]
    assert got["n_filters"] == n
    np.testing.assert_array_equal(zarr.open_group(str(db), mode="r")["weights"][:n],
                                  zarr.open_group(str(ref), mode="r")["weights"][:n])
    for name in ("records", "models"):
        pd.testing.assert_frame_equal(read_table(Location.of(db), name, got["version"]),
                                      read_table(Location.of(ref), name, want["version"]))
    for m in (got, want):
        for entry in m["provenance"]:
            entry.pop("time")
    assert got == want
    assert not (db / PROGRESS).exists()
    assert fs.verify(db).ok


def test_resume_without_destination_converts(sources, tmp_path):
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)
    assert _manifest(db)["provenance"][0]["sha256"] == hashlib.sha256(Path(a).read_bytes()).hexdigest()


KILLER = """
import os, signal, sys
from filtershift.store import convert as c
setattr(c._Writer, "run", lambda self: os.kill(os.getpid(), signal.SIGKILL))
c.convert(sys.argv[1], sys.argv[2], chunk_filters={chunk})
"""


def test_sigkill_before_hash_and_first_chunk_then_resume(sources, tmp_path):
    """A real SIGKILL just before the source hash and the first chunk (``_Writer.run``): the store is there, says
    ``converting``, refuses to open; ``--resume`` finishes it to the plain conversion's store."""
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    env = {**os.environ, "FILTERSHIFT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLER.format(chunk=CHUNK), str(a), str(db)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    assert _manifest(db)["state"] == "converting"
    assert json.loads((db / PROGRESS).read_text())["done"] == 0
    with pytest.raises(IncompleteStoreError, match="--resume"):
        fs.open_store(db)
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)


@pytest.mark.parametrize("where", ["open_source", "_Writer.run", "_Writer._open_arrays", "_Writer._copy_chunks"])
def test_kill_before_first_chunk_then_resume(sources, tmp_path, monkeypatch, where):
    """Kills before any chunk is written, wherever they fall, followed by ``--resume``: a complete store equal to
    the plain conversion (a kill while the source is validated leaves no destination: resume starts afresh)."""
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    killed_convert(a, db, where, monkeypatch)
    if where != "open_source":
        assert _manifest(db)["state"] == "converting"
        with pytest.raises(IncompleteStoreError, match="--resume"):
            fs.open_store(db)
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)


def test_resume_reuses_a_recorded_source_hash(sources, tmp_path, monkeypatch):
    """Killed after the hash was recorded (here: at the commit), a resume does not read the source again for it,
    and the provenance still carries the file's SHA-256."""
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    killed_convert(a, db, "_Writer._commit", monkeypatch)
    assert json.loads((db / PROGRESS).read_text())["sha256"] == hashlib.sha256(Path(a).read_bytes()).hexdigest()

    def no_rehash(self):
        raise AssertionError("the source was hashed again")

    monkeypatch.setattr(convert_module._Writer, "_hash_source", no_rehash)
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)


def test_resume_with_another_source_or_settings_refuses(sources, tmp_path, monkeypatch):
    a, b, ref = sources
    db = tmp_path / "db.zarr"
    killed_convert(a, db, "_Writer.run", monkeypatch)
    before = sorted(p.name for p in db.iterdir())
    with pytest.raises(StoreError, match="another source file"):
        convert(b, db, chunk_filters=CHUNK, resume=True)
    with pytest.raises(StoreError, match="other settings"):
        convert(a, db, chunk_filters=CHUNK // 2, resume=True)
    assert sorted(p.name for p in db.iterdir()) == before
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)
    # a complete store is not reported as done for another source or other settings
    with pytest.raises(StoreError, match=r"source 'a\.h5' \(asked: 'b\.h5'\)"):
        convert(b, db, chunk_filters=CHUNK, resume=True)
    with pytest.raises(StoreError, match="codec 'none' \\(asked: 'zstd'\\)"):
        convert(a, db, chunk_filters=CHUNK, codec="zstd", resume=True)
    assert_same_store(db, ref)


def test_resume_of_a_complete_store_says_so_and_exits_0(sources, tmp_path, capsys):
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    shutil.copytree(ref, db)
    mtimes = {p: p.stat().st_mtime_ns for p in db.rglob("*")}
    assert cli(["convert", str(a), str(db), "--resume", "--chunk-filters", str(CHUNK)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in db.rglob("*")} == mtimes
    assert cli(["convert", str(a), str(db), "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_resume_with_bad_source_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        convert(tmp_path / "nope.h5", tmp_path / "db.zarr", resume=True)
    assert not (tmp_path / "db.zarr").exists()


def test_resume_into_an_empty_directory_or_one_left_by_a_kill_during_group_creation(sources, tmp_path):
    """A kill between creating the destination directory and its group metadata leaves the directory with
    zarr's temporary file only; a resume (like a plain convert) treats it as empty."""
    a, _, ref = sources
    db = tmp_path / "db.zarr"
    db.mkdir()
    (db / f"zarr.{'0' * 32}.partial").write_bytes(b"{")
    convert(a, db, chunk_filters=CHUNK, resume=True)
    assert_same_store(db, ref)
    assert not list(db.glob("*.partial"))
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(StoreError, match="not a filtershift store"):
        convert(a, other, chunk_filters=CHUNK, resume=True)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
