"""Fixtures that start a real multi-process dask cluster (scheduler + workers via the dask CLI) on 127.0.0.1.

``local_cluster`` (session scope) yields the scheduler address for analyses to run on; tests that damage a
cluster (kill workers) use the ``local_processes`` factory, whose clusters are stopped after the test.
"""

import pytest
from _s3 import KEY_ID, SECRET

from filtershift.cluster import start_local_processes

WORKER_MEMORY = "1GB"
#: The session cluster's workers hold the fake credentials of tests/_s3.py's moto server (the endpoint travels with
#: the tasks), so modules that start that server after the cluster (test_fault_matrix) can use it for S3 stores.
WORKER_AWS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
              "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def local_cluster_processes():
    """The session's LocalProcesses: a scheduler and two one-thread workers. Its idle timeout only ends orphans
    of a killed test run: it must outlast the suite's longest stretch without cluster work (the crash loops)."""
    procs = start_local_processes(2, nthreads=1, memory_limit=WORKER_MEMORY, idle_timeout="3600s", env=WORKER_AWS)
    try:
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="session")
def local_cluster(local_cluster_processes):
    """Address ``tcp://127.0.0.1:PORT`` of a shared two-worker cluster; pass it as ``scheduler=``."""
    return local_cluster_processes.address


@pytest.fixture
def local_processes():
    """Factory ``start(n_workers, **kwargs) -> LocalProcesses``; every cluster it started is stopped afterwards."""
    started = []

    def start(n_workers=2, **kwargs):
        kwargs.setdefault("memory_limit", WORKER_MEMORY)
        kwargs.setdefault("idle_timeout", "300s")
        procs = start_local_processes(n_workers, **kwargs)
        started.append(procs)
        return procs

    try:
        yield start
    finally:
        for procs in started:
            procs.stop()
