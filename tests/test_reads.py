"""The read layer never answers with a fill value for a committed row (issue #12, "no silent wrong answers").

One small source (4,500 filters in chunks of 1,024 rows: five chunks, the last one partial), converted three ways:
a local store without compressor (read by the direct chunk reader), a local zstd store (read through zarr's codec
pipeline) and an S3 store (moto on 127.0.0.1, read through zarr and s3fs). Each fault is put into chunk 1 and
undone after the test; every clean read is compared with the source weights (numpy) and with plain zarr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import boto3
import numpy as np
import pytest
import zarr
from _s3 import KEY_ID, SECRET, moto_s3
from sources import make_meta, random_weights, reordered_meta, write_source

import filtershift as fs
from filtershift.cluster import scheduler_context
from filtershift.errors import StoreError
from filtershift.store import format as fmt
from filtershift.store.convert import convert
from filtershift.store.dataset import open_store

N, C = 4500, 1024
SIZES = [700, 1300, 500, 1000, 1000]
BUCKET = "filtershift-reads"
DAMAGED = 1
LAYOUTS = ["direct", "zstd", "s3"]


class _Deny:
    """WSGI middleware: answer 403 AccessDenied to a GET of the keys in ``keys`` (an unreadable object); records
    every request in ``requests``."""

    def __init__(self, app):
        self.app, self.keys, self.requests = app, set(), []

    def __call__(self, environ, start_response):
        self.requests.append((environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "")))
        if environ.get("REQUEST_METHOD") == "GET" and environ.get("PATH_INFO", "").lstrip("/") in self.keys:
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                    b"<Message>Access Denied</Message></Error>"]
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 behind a middleware that can deny reads of single keys; fake credentials; one bucket."""
    deny = {}

    def wrap(app):
        deny["app"] = _Deny(app)
        return deny["app"]

    with moto_s3(tmp_path_factory.mktemp("aws"), BUCKET, endpoint_variable=None, wrap=wrap) as server:
        yield server.endpoint, boto3.client("s3", endpoint_url=server.endpoint), deny["app"]


class Target:
    """One converted store: its URL and storage options, and raw access to its objects (to damage them)."""

    def __init__(self, url, options=None, client=None, deny=None):
        self.url, self.options, self.client, self.deny = url, options or {}, client, deny

    def key(self, i, array="weights"):
        return f"{array}/c/{i}" + ("/0" if array == "weights" else "")

    def _object(self, key):
        return self.url.split("/", 3)[3] + "/" + key

    def get(self, key) -> bytes | None:
        if self.client is None:
            path = os.path.join(self.url, key)
            return open(path, "rb").read() if os.path.isfile(path) else None
        try:
            return self.client.get_object(Bucket=BUCKET, Key=self._object(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put(self, key, data: bytes | None):
        if self.client is None:
            path = os.path.join(self.url, key)
            if os.path.isdir(path):
                os.rmdir(path)
            if data is None:
                if os.path.exists(path):
                    os.remove(path)
            else:
                with open(path, "wb") as f:
                    f.write(data)
        elif data is None:
            self.client.delete_object(Bucket=BUCKET, Key=self._object(key))
        else:
            self.client.put_object(Bucket=BUCKET, Key=self._object(key), Body=data)

    def plain(self):
        """The weights array through plain zarr (no filtershift code)."""
        store = zarr.storage.LocalStore(self.url, read_only=True) if self.client is None else \
            zarr.storage.FsspecStore.from_url(self.url, storage_options=self.options, read_only=True)
        return zarr.open_group(store=store, mode="r")["weights"]

    def open(self):
        return open_store(self.url, **self.options)

    @contextlib.contextmanager
    def damaged(self, kind, i=DAMAGED, array="weights"):
        key = self.key(i, array)
        original = self.get(key)
        try:
            if kind == "missing":
                self.put(key, None)
            elif kind == "empty":
                self.put(key, b"")
            elif kind == "short":
                self.put(key, original[:len(original) // 2])
            elif kind == "flipped":
                data = bytearray(original)
                data[len(data) // 3] ^= 0x10
                self.put(key, bytes(data))
            elif kind == "swapped":                  # another chunk of the same size: a valid checksum
                self.put(key, self.get(self.key(i + 1, array)))
            elif kind == "unreadable":
                if self.client is None:              # root reads any file: a directory stands in for it
                    self.put(key, None)
                    os.mkdir(os.path.join(self.url, key))
                else:
                    self.deny.keys.add(f"{BUCKET}/{self._object(key)}")
            else:
                raise AssertionError(kind)
            yield
        finally:
            if self.deny is not None:
                self.deny.keys.clear()
            self.put(key, original)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("reads")
    w = random_weights(N, seed=12)
    return write_source(root / "src.h5", w, make_meta(SIZES)), w


@pytest.fixture(scope="module")
def stores(source, s3, tmp_path_factory):
    src, _ = source
    root = tmp_path_factory.mktemp("stores")
    endpoint, client, deny = s3
    options = {"endpoint_url": endpoint, "key": KEY_ID, "secret": SECRET,
               "client_kwargs": {"region_name": "us-east-1"},
               "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}
    convert(src, root / "direct.zarr", chunk_filters=C)
    convert(src, root / "zstd.zarr", chunk_filters=C, codec="zstd")
    convert(src, f"s3://{BUCKET}/db.zarr", chunk_filters=C, storage_options=options)
    return {"direct": Target(str(root / "direct.zarr")), "zstd": Target(str(root / "zstd.zarr")),
            "s3": Target(f"s3://{BUCKET}/db.zarr", options, client, deny)}


def values(ds, scheduler="threads"):
    with scheduler_context(scheduler, quiet=True):
        return ds["weights"].values


@pytest.mark.parametrize("layout", LAYOUTS)
def test_clean_read_equals_numpy_and_plain_zarr(stores, source, layout):
    target = stores[layout]
    got = values(target.open())
    np.testing.assert_array_equal(got, source[1])
    np.testing.assert_array_equal(got, target.plain()[:N])
    assert fs.verify(target.url, **target.options).ok


FAULTS = {"missing": "is missing", "empty": "is corrupted", "short": "is corrupted", "flipped": "is corrupted",
          "swapped": "does not hold the filters written there", "unreadable": "cannot be read"}


@pytest.mark.parametrize("kind", list(FAULTS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_damaged_chunk_is_an_error_naming_it(stores, source, layout, kind):
    """Every read of the damaged chunk fails with the store, array, chunk and remedy; other chunks still read;
    verify reports it."""
    target = stores[layout]
    with target.damaged(kind):
        ds = target.open()
        with pytest.raises(StoreError) as info:
            values(ds)
        text = str(info.value)
        assert text.startswith(f"{target.url}: array 'weights' chunk {DAMAGED} (filters {C}:{2 * C}) ")
        assert FAULTS[kind] in text and "filtershift verify" in text and SECRET not in text
        np.testing.assert_array_equal(values(ds.isel(filter=slice(0, C))), source[1][:C])
        report = fs.verify(target.url, **target.options)
        assert not report.ok and report.problems[0].startswith(f"weights chunk {DAMAGED} ")
        assert FAULTS[kind] in report.problems[0]


@pytest.mark.parametrize("layout", ["zstd"])
def test_faults_on_dask_workers(stores, local_cluster, layout):
    """The reader pickled to two worker processes checks the same way: a missing and a replaced chunk. The direct
    reader and S3 on workers are tests/test_fault_matrix.py's (deleted and swapped chunk x local and S3 x a process
    cluster, through every command); this is the zarr codec path (zstd) there."""
    target = stores[layout]
    for kind in ("missing", "swapped"):
        with target.damaged(kind):
            with pytest.raises(StoreError, match=f"'weights' chunk {DAMAGED} .*{FAULTS[kind]}"):
                values(target.open(), local_cluster)


@pytest.mark.parametrize("layout", ["direct", "zstd"])
def test_relative_path_on_workers_in_another_directory(stores, local_cluster, local_cluster_processes, layout,
                                                       monkeypatch, source):
    """A relative path is made absolute where it was typed; the workers run in the cluster's own directory."""
    target = stores[layout]
    assert os.path.realpath(local_cluster_processes.directory) != os.path.realpath(os.path.dirname(target.url))
    monkeypatch.chdir(os.path.dirname(target.url))
    ds = open_store(os.path.basename(target.url))
    expected = values(ds, "threads")
    np.testing.assert_array_equal(expected, source[1])
    np.testing.assert_array_equal(values(ds, local_cluster), expected)
    assert ds.attrs["store"] == target.url


@pytest.mark.parametrize("layout", ["zstd"])
def test_store_moved_after_open_is_an_error_on_threads_and_workers(stores, local_cluster, layout):
    """The direct reader's case, threads and workers, is tests/test_fault_matrix.py::test_store_deleted_during_a_run
    (the same words, through every command)."""
    target = stores[layout]
    ds = target.open()
    moved = target.url + ".moved"
    os.rename(target.url, moved)
    try:
        for scheduler in ("threads", local_cluster):
            with pytest.raises(StoreError) as info:
                values(ds, scheduler)
            text = str(info.value)
            assert f"the store directory {target.url} does not exist on host {socket.gethostname()}" in text
            assert "object storage" in text and "shared file system" in text
    finally:
        os.rename(moved, target.url)


def test_s3_store_deleted_after_open_is_an_error(stores):
    target = stores["s3"]
    ds = target.open()
    with target.damaged("missing", 0), target.damaged("missing", DAMAGED):
        manifest = target.get("zarr.json")
        target.put("zarr.json", None)
        try:
            with pytest.raises(StoreError, match="the store no longer exists"):
                values(ds)
        finally:
            target.put("zarr.json", manifest)


@pytest.mark.parametrize("layout", ["direct", "zstd"])
def test_rows_past_n_filters_are_never_read(stores, source, layout, tmp_path):
    """An append in progress: the array grew past n_filters, the last committed chunk got new rows past
    n_filters and new chunks exist. Damaging a chunk wholly past n_filters (a directory, garbage) or the rows past
    n_filters changes nothing; the sum check covers only committed rows."""
    url = str(tmp_path / "db.zarr")
    shutil.copytree(stores[layout].url, url)
    target = Target(url)
    array = zarr.open_array(os.path.join(url, "weights"), mode="r+")
    array.resize((N + 2 * C, 9))
    array[N:] = np.full((2 * C, 9), 7.0, np.float32)
    last = N // C + 1                                 # the first chunk wholly past n_filters
    np.testing.assert_array_equal(values(target.open()), source[1])
    with target.damaged("unreadable", last), target.damaged("flipped", last + 1):
        np.testing.assert_array_equal(values(target.open()), source[1])
    with target.damaged("missing", last):
        np.testing.assert_array_equal(values(target.open()), source[1])
        assert fs.verify(url).ok


def test_all_zero_chunk_that_zarr_did_not_write_reads_as_zeros(tmp_path):
    """Schema 1: zarr does not write a chunk whose values all equal the fill value: an absent chunk whose recorded
    sum is exactly 0.0 is such a chunk (kept readable); any other absent chunk is an error. Schema 2 writes every
    chunk, so there an absent all-zero chunk is an error too."""
    w = random_weights(N, seed=5)
    w[C:2 * C] = 0.0
    src = write_source(tmp_path / "z.h5", w, make_meta(SIZES))
    for codec in ("none", "zstd"):
        db = tmp_path / f"{codec}.zarr"
        convert(src, db, chunk_filters=C, codec=codec, schema=1)
        assert not (db / "weights" / "c" / "1").exists()
        np.testing.assert_array_equal(values(open_store(db)), w)
        os.remove(db / "weights" / "c" / "2" / "0")
        with pytest.raises(StoreError, match=r"'weights' chunk 2 .*is missing"):
            values(open_store(db))
        db2 = tmp_path / f"{codec}-2.zarr"
        convert(src, db2, chunk_filters=C, codec=codec)
        assert (db2 / "weights" / "c" / "1" / "0").exists()
        np.testing.assert_array_equal(values(open_store(db2)), w)
        os.remove(db2 / "weights" / "c" / "1" / "0")
        with pytest.raises(StoreError, match=r"'weights' chunk 1 .*is missing"):
            values(open_store(db2))


def test_missing_filter_id_chunk(tmp_path):
    """filter_id (reordered sources) has no fill value that could be right for a committed row."""
    w = random_weights(N, seed=6)
    meta = reordered_meta(SIZES, shuffle=[4, 3, 2, 1, 0])
    src = write_source(tmp_path / "r.h5", w, meta, key="filter", meta_format="fixed")
    db = tmp_path / "r.zarr"
    convert(src, db, chunk_filters=C, trust_pickle=True)
    ds = open_store(db)
    assert "filter_id" in ds.coords
    os.remove(db / "filter_id" / "c" / "3")
    with pytest.raises(StoreError, match=r"'filter_id' chunk 3 .*is missing"):
        with scheduler_context("threads", quiet=True):
            ds["filter_id"].compute()


@contextlib.contextmanager
def manifest_changed(target, **changes):
    group = zarr.open_group(store=zarr.storage.LocalStore(target.url) if target.client is None else
                            zarr.storage.FsspecStore.from_url(target.url, storage_options=target.options),
                            mode="r+")
    original = dict(group.attrs[fmt.MANIFEST_KEY])
    try:
        fmt.write_manifest(group, {**original, **changes})
        yield
    finally:
        fmt.write_manifest(group, original)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_manifest_faults_at_open(stores, layout):
    target = stores[layout]
    with manifest_changed(target, n_filters=N + C * 3):
        with pytest.raises(StoreError, match=f"manifest says {N + 3 * C} filters, but the array 'weights' has "
                                             rf"shape \({N}, 9\)"):
            target.open()
    version = int(zarr.open_group(store=target.plain().store, mode="r").attrs[fmt.MANIFEST_KEY]["version"])
    with manifest_changed(target, version=version + 1):
        with pytest.raises(StoreError, match=f"tables/v{version + 1}/records of the manifest's version "
                                             f"{version + 1} is missing \\(table versions present: v{version}"):
            target.open()
    with manifest_changed(target, n_filters=N - 1):
        with pytest.raises(StoreError, match="do not match the manifest: records do not tile"):
            target.open()


def test_permission_denied_names_the_chunk(stores, tmp_path_factory):
    """A chunk file this process may not read. Tests run as root, which reads any file: the reader runs in a
    subprocess without root's two DAC-override capabilities, so the file mode applies to it (its owner, root, may
    still read the project's files wherever CI put them, which a user switch to nobody may not)."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.fail("this test needs setpriv and root (to drop root's DAC-override capabilities)")
    root = tempfile.mkdtemp(prefix="filtershift-perm-")
    try:
        paths = {}
        for layout in ("direct", "zstd"):
            paths[layout] = shutil.copytree(stores[layout].url, os.path.join(root, f"{layout}.zarr"))
            os.chmod(os.path.join(paths[layout], "weights", "c", str(DAMAGED), "0"), 0)
        script = ("import json, sys\nfrom filtershift.errors import StoreError\n"
                  "from filtershift.store.dataset import open_store\nout = {}\n"
                  "for path in sys.argv[1:]:\n"
                  f"    try:\n        open_store(path)['weights'][{C}:{2 * C}].compute(scheduler='threads')\n"
                  "        out[path] = None\n"
                  "    except StoreError as exc:\n        out[path] = str(exc)\n"
                  "print(json.dumps(out))\n")
        env = {**os.environ, "HOME": root}
        done = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                               "-c", script, *paths.values()], capture_output=True, text=True, env=env,
                              cwd=root, timeout=120)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        for path in paths.values():
            assert out[path].startswith(f"{path}: array 'weights' chunk {DAMAGED} (filters {C}:{2 * C}) cannot be "
                                        "read (Permission denied)"), out[path]
    finally:
        shutil.rmtree(root)


def test_s3_reads_are_one_get_per_object(stores):
    """Opening the store and reading every chunk: one GET per object, no HEAD before each (s3fs >= 2025 asks an
    object's size first unless max_concurrency=1) and no listing per table column (absence is seen in the GET)."""
    target = stores["s3"]
    requests = target.deny.requests
    requests.clear()
    ds = target.open()
    values(ds)
    methods = {m for m, _ in requests}
    paths = [p for _, p in requests]
    tables = [p for p in paths if "/tables/" in p and not p.endswith("zarr.json")]
    chunks = [p for p in paths if "/weights/c/" in p]
    n_columns = len(fs.records(ds).columns) + len(fs.models(ds).columns)
    assert methods == {"GET"}, sorted(set(requests))
    assert len(tables) == len(set(tables)) >= n_columns - 2        # record/model ids may be index columns
    assert sorted(chunks) == sorted(set(chunks)) and len(chunks) == -(-N // C)
    assert len(paths) <= len(tables) + len(chunks) + 10, paths     # a few metadata documents besides


def test_direct_reader_stays_a_view(stores):
    """The direct reader hands out views of the mapped chunk file (no copy) for chunk-aligned requests."""
    from filtershift.store.chunks import ChunkReader

    group = zarr.open_group(stores["direct"].url, mode="r")
    manifest = group.attrs[fmt.MANIFEST_KEY]
    reader = ChunkReader(group["weights"], fmt.Location.of(stores["direct"].url), N,
                         manifest["integrity"]["chunk_sums"])
    assert reader.direct
    block = reader[C:2 * C, 0:9]
    assert not block.flags.owndata and not block.flags.writeable
    np.testing.assert_array_equal(block, stores["direct"].plain()[C:2 * C])
