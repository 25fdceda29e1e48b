"""An analysis of a store larger than the workers' memory completes on a memory-limited LocalCluster and gives the
numbers of a threaded run.

Scaled down to fit the suite: one worker process with two threads and a 512 MiB memory limit (its nanny kills it
at 95 %), a 0.58 GB store (1.6e7 filters). A worker with filtershift imported already holds ~230 MiB, so the
store is more than twice the memory left for data. The worker's resident memory is sampled during the analysis;
it must stay under the limit and the worker must never be restarted.
"""

from __future__ import annotations

import os
import threading
import time

import dask
import numpy as np
import pandas as pd
import psutil
import pytest

from filtershift.stats import distributions, drift, fit_basis, record_stats
from filtershift.stats.quality import layer_quality
from filtershift.store.dataset import open_store
from filtershift.synth import synthesize

N_FILTERS = 16_000_000
LIMIT = 512 * 2**20


def analyse(store):
    ds = open_store(store)
    stats = record_stats(ds)
    basis = fit_basis(stats)
    dist = distributions(stats, basis, by="task")
    return basis, dist, drift(dist, "kl_sym"), layer_quality(stats)


def test_analysis_of_a_store_larger_than_worker_memory(tmp_path):
    from distributed import Client, LocalCluster

    store = synthesize(tmp_path / "db.zarr", n_filters=N_FILTERS, n_models=40, seed=5, format="zarr")
    size = sum(p.stat().st_size for p in (store / "weights").rglob("*") if p.is_file())
    assert size > 1.05 * LIMIT, size
    peak = {}
    with LocalCluster(n_workers=1, threads_per_worker=2, memory_limit=LIMIT, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        stop = threading.Event()

        def sample():
            procs = {pid: psutil.Process(pid) for pid in pids.values()}
            while not stop.is_set():
                for pid, p in procs.items():
                    try:
                        peak[pid] = max(peak.get(pid, 0), p.memory_info().rss)
                    except psutil.Error:
                        peak[pid] = float("inf")  # the worker died
                time.sleep(0.02)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            got = analyse(store)
        finally:
            stop.set()
            watcher.join()
        assert client.run(os.getpid) == pids, "a worker was restarted (it went over its memory limit)"
    print(f"store {size / 2**20:.0f} MiB; worker peak RSS {[f'{v / 2**20:.0f} MiB' for v in peak.values()]}, "
          f"limit {LIMIT / 2**20:.0f} MiB")
    assert peak and max(peak.values()) < LIMIT

    with dask.config.set(scheduler="threads"):
        want = analyse(store)
    (b1, d1, k1, q1), (b2, d2, k2, q2) = got, want
    np.testing.assert_allclose(b1.components_, b2.components_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b1.explained_variance_, b2.explained_variance_, rtol=1e-12)
    np.testing.assert_array_equal(d1["counts"].values, d2["counts"].values)
    assert int(d1["counts"].values.sum()) == N_FILTERS * d1.sizes["component"]
    np.testing.assert_allclose(k1.values, k2.values, rtol=1e-12, equal_nan=True)
    pd.testing.assert_frame_equal(q1, q2, rtol=1e-10)


@pytest.mark.extended
def test_worker_over_its_memory_limit_is_reported_clearly(tmp_path):
    """One 4e6-filter chunk (144 MB, decoded twice over) cannot fit a 300 MiB worker: its nanny restarts it each
    time, dask gives up after the allowed failures, and `filtershift pca` ends with a message naming the remedies.
    A bounded run, not a hang: restarting a worker of a local cluster used to fail on an unpicklable dask config
    (the client set as scheduler) and left the computation waiting forever."""
    import subprocess
    import sys

    from filtershift.store.convert import convert

    src = synthesize(tmp_path / "dataset.h5", n_filters=4_000_000, n_models=4, seed=2)
    store = convert(src, tmp_path / "db.zarr", chunk_filters=4_000_000)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "filtershift.cli", "pca", str(store), "--scheduler", "local",
                           "--workers", "1", "--memory-limit", "300MiB", "--no-dashboard"],
                          capture_output=True, text=True, timeout=240)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("filtershift pca: error: a dask worker died while computing"), last
    for remedy in ("--memory-limit", "fewer --workers", "--chunk-filters"):
        assert remedy in last
    assert "exceeded 95% memory budget" in proc.stderr        # it really was the memory limit
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    print(f"memory-limit failure reported after {elapsed:.1f} s")
