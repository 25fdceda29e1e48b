"""Scale out: a store in object storage (S3 served by moto on 127.0.0.1) analysed on multi-process dask clusters.

Every result is compared with the same analysis of a local conversion of the same source on the threaded
scheduler. The credentials are fake; they travel in the storage options (the workers of the session cluster may
have been started before this module set the AWS variables), and must never show in messages, output or logs.
"""

import os
import socket
import threading
import time
import traceback

import boto3
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from _s3 import KEY_ID, SECRET, moto_s3, moto_server
from distributed import get_task_stream

from filtershift.cluster import scheduler_context
from filtershift.errors import StoreError
from filtershift.stats import distributions, drift, fit_basis
from filtershift.stats.quality import layer_quality
from filtershift.store import format as fmt
from filtershift.store.convert import convert
from filtershift.store.dataset import models, open_store, records
from filtershift.synth import synthesize

BUCKET = "filtershift-scale"
URL = f"s3://{BUCKET}/db.zarr"
CHUNK = 4096            # 60,000 filters -> 15 chunks, so every pass has work for every worker
CHUNK_DELAY = 0.1       # seconds per weights-chunk GET on the slowed endpoint
FAST_FAIL = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 1, "read_timeout": 0.5}


def options(endpoint: str, **extra) -> dict:
    return {"endpoint_url": endpoint, "key": KEY_ID, "secret": SECRET,
            "client_kwargs": {"region_name": "us-east-1"}, **extra}


class _SlowChunks:
    """WSGI middleware: delay every GET of a weights chunk and count them (the analysis' progress)."""

    def __init__(self, app, delay: float):
        self.app, self.delay, self.reads = app, delay, 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET" and "/weights/c/" in environ.get("PATH_INFO", ""):
            time.sleep(self.delay)
            with self._lock:
                self.reads += 1
        return self.app(environ, start_response)


class S3:
    def __init__(self, endpoint, slow_endpoint, slow):
        self.endpoint, self.slow_endpoint, self.slow = endpoint, slow_endpoint, slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (plus a second endpoint on the same in-process backend that slows chunk reads),
    fake credentials in the environment, one bucket."""
    slow = {}

    def wrap(app):
        slow["app"] = _SlowChunks(app, CHUNK_DELAY)
        return slow["app"]

    with moto_s3(tmp_path_factory.mktemp("aws"), BUCKET, endpoint_variable=None) as server, \
            moto_server(wrap) as slow_endpoint:
        yield S3(server.endpoint, slow_endpoint, slow["app"])


@pytest.fixture(scope="module")
def stores(s3, tmp_path_factory):
    """The same synthetic source converted to a local store and to S3, with the same chunking."""
    root = tmp_path_factory.mktemp("scale")
    src = synthesize(root / "dataset.h5", n_filters=60_000, n_models=8, seed=1)
    local = str(root / "db.zarr")
    convert(src, local, chunk_filters=CHUNK)
    t0 = time.perf_counter()
    convert(src, URL, chunk_filters=CHUNK, storage_options=options(s3.endpoint))
    print(f"convert to S3 (moto): {time.perf_counter() - t0:.2f} s")
    return local


def analyse(ds):
    """Shift (per-task histogram counts in the PCA basis, drift) and per-record quality of ``ds``."""
    dist = distributions(ds, fit_basis(ds), by="task")
    return dist["counts"], drift(dist), layer_quality(ds)


@pytest.fixture(scope="module")
def reference(stores):
    """The analysis of the local store on the threaded scheduler."""
    with scheduler_context("threads"):
        return analyse(open_store(stores))


def assert_same(result, expected):
    """The same bits: counts (a lost or repeated chunk changes them), bin edges, drift values and every quality
    number. The partials combine in the same tree everywhere, and every kernel compiles to the same code whatever
    the process compiled before (tests/test_determinism.py; CI runs before that fix showed last-bit differences
    between a process cluster and the threaded run)."""
    (c, d, q), (c_ref, d_ref, q_ref) = result, expected
    xr.testing.assert_identical(c, c_ref)
    assert int(c.sum()) == 60_000 * c.sizes["component"]
    assert d.dims == d_ref.dims and d.shape == d_ref.shape and d.shape[0] >= 2
    assert np.isfinite(d.values).any()
    xr.testing.assert_identical(d, d_ref)
    assert len(q) == len(q_ref) > 0
    pd.testing.assert_frame_equal(q, q_ref, check_exact=True)


def assert_no_secret(*texts):
    for text in texts:
        assert SECRET not in text
        assert KEY_ID not in text


def test_s3_store_equals_local_conversion(s3, stores, capfd):
    ds = open_store(URL, storage_options=options(s3.endpoint))
    local = open_store(stores)
    assert ds.attrs["store"] == URL and ds.sizes["filter"] == local.sizes["filter"] == 60_000
    assert ds.weights.chunks == local.weights.chunks and len(ds.weights.chunks[0]) == 15
    np.testing.assert_array_equal(ds.weights.values, local.weights.values)
    pd.testing.assert_frame_equal(records(ds), records(local), check_exact=True)
    pd.testing.assert_frame_equal(models(ds), models(local), check_exact=True)
    np.testing.assert_array_equal(ds["task"].values, local["task"].values)
    assert ds["task"].attrs == local["task"].attrs
    # the objects are really in the bucket, written through s3fs
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3.endpoint)
            .list_objects_v2(Bucket=BUCKET, Prefix="db.zarr/")["Contents"]]
    assert "db.zarr/zarr.json" in keys and sum("/weights/c/" in k for k in keys) == 15
    assert any(k.startswith("db.zarr/tables/v1/records/") for k in keys)
    assert_no_secret(repr(ds.attrs["store"]), *capfd.readouterr())


def test_analysis_from_s3_on_threads_equals_local(s3, reference, capfd):
    with scheduler_context("threads"):
        assert_same(analyse(open_store(URL, **options(s3.endpoint))), reference)
    assert_no_secret(*capfd.readouterr())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_analysis_on_process_cluster_equals_threaded(where, local_cluster, local_cluster_processes, s3, stores,
                                                     reference, capfd):
    target, opts = (stores, {}) if where == "local" else (URL, options(s3.endpoint))
    with scheduler_context(local_cluster, dashboard=False) as conn:
        assert conn.kind == "distributed"
        worker_pids = set(conn.client.run(os.getpid).values())
        workers = set(conn.client.scheduler_info(n_workers=-1)["workers"])
        with get_task_stream(client=conn.client) as stream:
            result = analyse(open_store(target, **opts))
    assert_same(result, reference)
    # the chunks were read and reduced in the worker processes, not in this one
    assert {t["worker"] for t in stream.data} == workers
    assert sum("weights-" in str(t["key"]) for t in stream.data) >= 15
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    logs = "".join(p.read_text(errors="replace") for p in local_cluster_processes.directory.glob("*.log"))
    assert_no_secret(logs, *capfd.readouterr())


@pytest.mark.extended
def test_sigkill_one_worker_mid_analysis_still_completes(local_processes, s3, stores, reference, capfd):
    procs = local_processes(2, nthreads=1)
    ds = open_store(URL, **options(s3.slow_endpoint))
    outcome = {}

    def run():
        try:
            outcome["result"] = analyse(ds)
        except BaseException as exc:        # reported by the main thread
            outcome["error"] = exc

    with scheduler_context(procs.address, dashboard=False) as conn:
        client = conn.client
        pid_of = client.run(os.getpid)
        start_reads = s3.slow.reads
        worker = threading.Thread(target=run, daemon=True)
        t0 = time.perf_counter()
        worker.start()
        victim = None
        deadline = time.monotonic() + 180              # a hang guard, not a speed bound (loaded CI machines)
        while victim is None and time.monotonic() < deadline and worker.is_alive():
            busy = [addr for addr, keys in client.processing().items() if keys]
            if s3.slow.reads - start_reads >= 4 and busy:
                victim = busy[0]
            else:
                time.sleep(0.02)
        assert victim is not None, "the analysis never got going on the cluster"
        assert worker.is_alive(), "the analysis finished before a worker could be killed"
        reads_at_kill = s3.slow.reads - start_reads
        killed = procs.kill_worker_process(pid_of[victim])
        assert procs.workers[killed].poll() is not None
        worker.join(300)
        elapsed = time.perf_counter() - t0
        assert not worker.is_alive(), "the analysis hung after a worker was killed"
        remaining = set(client.scheduler_info(n_workers=-1)["workers"])
    if "error" in outcome:
        raise outcome["error"]
    assert victim not in remaining and len(remaining) == 1
    assert s3.slow.reads - start_reads > reads_at_kill
    assert_same(outcome["result"], reference)
    logs = "".join(p.read_text(errors="replace") for p in procs.directory.glob("*.log"))
    assert_no_secret(logs, *capfd.readouterr())
    print(f"kill test: {reads_at_kill} chunk reads before the kill, "
          f"{s3.slow.reads - start_reads} in all, {elapsed:.1f} s")


def _error_of(call, bound: float) -> tuple[StoreError, float]:
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as info:
        call()
    elapsed = time.perf_counter() - t0
    assert elapsed < bound, f"took {elapsed:.1f} s"
    text = "".join(traceback.format_exception(info.value))
    assert_no_secret(text, str(info.value))
    return info.value, elapsed


def test_wrong_bucket_is_a_store_error_without_credentials(s3, capfd):
    exc, _ = _error_of(lambda: open_store("s3://no-such-bucket/db.zarr", **options(s3.endpoint)), 10)
    assert "s3://no-such-bucket/db.zarr" in str(exc) and "no filtershift store" in str(exc)
    exc, _ = _error_of(lambda: open_store(f"s3://{BUCKET}/missing.zarr", **options(s3.endpoint)), 10)
    assert "missing.zarr" in str(exc)
    assert_no_secret(*capfd.readouterr())


def test_unreachable_endpoint_fails_fast_with_a_store_error(stores, capfd):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()                                      # nothing listens there now
    exc, _ = _error_of(lambda: open_store(URL, **options(dead, config_kwargs=FAST_FAIL)), 10)
    assert "cannot open the store" in str(exc) and dead in str(exc) and URL in str(exc)
    src = os.path.join(os.path.dirname(stores), "dataset.h5")
    exc, _ = _error_of(lambda: convert(src, f"s3://{BUCKET}/other.zarr",
                                       storage_options=options(dead, config_kwargs=FAST_FAIL)), 10)
    assert "cannot write the store" in str(exc)
    assert_no_secret(*capfd.readouterr())


def test_silent_endpoint_times_out_instead_of_hanging(capfd):
    with socket.socket() as silent:                      # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        exc, elapsed = _error_of(lambda: open_store(URL, **options(endpoint, config_kwargs=FAST_FAIL)), 30)
    assert "did not answer in time" in str(exc) and URL in str(exc)
    assert_no_secret(*capfd.readouterr())
    print(f"silent endpoint: StoreError after {elapsed:.1f} s")


def test_secret_scrubbing_of_remote_errors():
    """A remote failure whose text echoes a credential is reported with the credential masked."""
    loc = fmt.Location.of("s3://b/db.zarr", {"key": KEY_ID, "secret": SECRET,
                                             "client_kwargs": {"aws_session_token": "tok-123456"}})
    with pytest.raises(StoreError) as info:
        with fmt.remote_errors(loc):
            raise PermissionError(f"denied for {KEY_ID} with {SECRET} and tok-123456 via https://u:p@host/x")
    text = str(info.value)
    assert_no_secret(text)
    assert "tok-123456" not in text and "u:p@" not in text and "access denied" in text
    with pytest.raises(ValueError):                      # not a storage failure: passes through unchanged
        with fmt.remote_errors(loc):
            raise ValueError("a bug")
    with pytest.raises(FileNotFoundError):               # local paths keep their own errors
        with fmt.remote_errors(fmt.Location.of("/nonexistent/db.zarr")):
            raise FileNotFoundError("x")
