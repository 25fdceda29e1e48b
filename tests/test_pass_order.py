"""The scan order of a pass (issue #14, v1.0 scale): passes alternate direction so that each starts on what the page
cache still holds, the direction never changes a result, and the reader's read-ahead hints never hide a missing
chunk."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest

import filtershift as fs
from filtershift.errors import StoreError
from filtershift.stats import moments, reduction
from filtershift.stats.cache import RecordStats
from filtershift.store import chunks
from filtershift.synth import synthesize

CHUNK = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """40 chunks of 1,000 filters: three levels of the combine tree (split_every 8)."""
    tmp = tmp_path_factory.mktemp("order")
    src = synthesize(tmp / "s.h5", n_filters=40 * CHUNK - 250, n_models=12, seed=3)
    return fs.convert(src, str(tmp / "s.zarr"), chunk_filters=CHUNK)


def scan(ds, descending: bool) -> list[int]:
    """The chunks a pass reads, in the order it reads them (the synchronous scheduler: dask's own order)."""
    seen = []
    real = chunks.ChunkReader.chunk

    def chunk(self, i):
        if self.name == "weights":
            seen.append(i)
        return real(self, i)

    chunks.ChunkReader.chunk = chunk
    try:
        with dask.config.set(scheduler="sync"):
            reduction.reduce(ds, moments.MOMENTS, descending=descending)
    finally:
        chunks.ChunkReader.chunk = real
    return seen


def test_a_pass_scans_in_the_direction_asked(store):
    ds = fs.open_store(store)
    for descending in (True, False):
        order = scan(ds, descending)
        assert sorted(order) == list(range(40))
        steps = np.diff(order)
        along = np.count_nonzero(steps == (-1 if descending else 1))
        assert along >= 0.75 * len(steps), (descending, order)


def test_the_direction_changes_no_bit(store, monkeypatch):
    """All three passes, each scanned the other way round, give the same bits (threads: blocks finish in any
    order; the combine tree fixes the order of the merges)."""
    real = reduction.reduce

    def results():
        ds = fs.open_store(store)
        with dask.config.set(scheduler="threads"):
            stats = RecordStats(ds)
            basis = fs.fit_basis(stats)
            return basis, fs.distributions(stats, basis, by="task").load()

    basis, dist = results()
    monkeypatch.setattr("filtershift.stats.cache.reduce",
                        lambda *a, descending=True, **kw: real(*a, descending=not descending, **kw))
    flipped_basis, flipped = results()
    np.testing.assert_array_equal(basis.components_, flipped_basis.components_)
    np.testing.assert_array_equal(basis.mean_, flipped_basis.mean_)
    for name in dist.variables:
        np.testing.assert_array_equal(dist[name].values, flipped[name].values, err_msg=name)


def test_passes_alternate_direction(store, monkeypatch):
    ds = fs.open_store(store)
    directions = []
    real = reduction.reduce

    def spy(*args, descending=True, **kw):
        directions.append(descending)
        return real(*args, descending=descending, **kw)

    monkeypatch.setattr("filtershift.stats.cache.reduce", spy)
    stats = RecordStats(ds)
    fs.distributions(ds, fs.fit_basis(stats), by="task")
    assert stats.passes == 3 and directions == [True, False, True]


def test_read_ahead_hints_hide_no_missing_chunk(store, tmp_path):
    import shutil

    db = tmp_path / "db.zarr"
    shutil.copytree(store, db)
    os.remove(db / "weights" / "c" / "5" / "0")
    ds = fs.open_store(db)
    w = ds["weights"]
    np.testing.assert_array_equal(w[4 * CHUNK:5 * CHUNK].values, fs.open_store(store)["weights"][4 * CHUNK:5 * CHUNK])
    np.testing.assert_array_equal(w[6 * CHUNK:7 * CHUNK].values, fs.open_store(store)["weights"][6 * CHUNK:7 * CHUNK])
    with pytest.raises(StoreError, match="chunk 5"):
        w[5 * CHUNK:6 * CHUNK].load()


def test_read_ahead_only_while_reads_run_in_sequence(store, monkeypatch):
    """A lookup of single filters reads no chunk it does not use; a scan hints its neighbours."""
    hinted = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: (
        hinted.append(os.readlink(f"/proc/self/fd/{fd}")) if advice == os.POSIX_FADV_WILLNEED else None,
        real(fd, off, n, advice))[-1])
    w = fs.open_store(store)["weights"]
    w[20 * CHUNK].load()
    w[3 * CHUNK].load()
    assert hinted == []
    w[4 * CHUNK].load()
    assert sorted(int(p.split("/")[-2]) for p in hinted) == [2, 3, 5, 6]
