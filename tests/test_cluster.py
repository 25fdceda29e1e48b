"""Scheduler choice and real multi-process clusters on 127.0.0.1 (dask CLI processes)."""

import os
import re
import socket
import time

import dask
import dask.array as da
import numpy as np
import psutil
import pytest

from filtershift.cluster import (
    MEMORY_FRACTION,
    THREADS_PER_WORKER,
    machine_defaults,
    redact,
    resolve_scheduler,
    scheduler_context,
)
from filtershift.errors import FiltershiftError


def test_reduction_on_processes_equals_numpy(local_cluster_processes):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((40_000, 9)).astype(np.float32)
    x = da.from_array(data, chunks=(5_000, 9))

    def _pid_block(block):
        return np.full((1, 1), os.getpid(), dtype=np.int64)

    with scheduler_context(local_cluster_processes.address, quiet=True) as conn:
        assert conn.kind == "distributed" and conn.source == "argument"
        total, sq = dask.compute(x.sum(axis=0, dtype=np.float64), (x.astype(np.float64) ** 2).mean())
        pids = set(x.map_blocks(_pid_block, chunks=(1, 1), dtype=np.int64).compute().ravel().tolist())
        worker_pids = set(conn.client.run(os.getpid).values())
    np.testing.assert_allclose(total, data.astype(np.float64).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sq, (data.astype(np.float64) ** 2).mean(), rtol=1e-12)
    assert os.getpid() not in pids
    assert pids <= worker_pids and len(worker_pids) == 2
    for pid in pids:
        assert os.getpgid(pid) in local_cluster_processes.pids["workers"]


def test_scheduler_file_and_env_reach_the_same_cluster(local_cluster_processes, monkeypatch):
    x = da.arange(1000, chunks=100)
    with scheduler_context(str(local_cluster_processes.scheduler_file), quiet=True) as conn:
        assert conn.address == local_cluster_processes.address
        assert int(x.sum().compute()) == 999 * 1000 // 2
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", local_cluster_processes.address)
    with scheduler_context(quiet=True) as conn:
        assert (conn.kind, conn.source) == ("distributed", "DASK_SCHEDULER_ADDRESS")
        assert int((x * 2).sum().compute()) == 999 * 1000


def test_sigkill_one_worker_mid_computation_still_completes(local_processes):
    procs = local_processes(2)
    data = np.arange(24 * 1000, dtype=np.float64).reshape(24 * 100, 10)
    x = da.from_array(data, chunks=(100, 10))

    def slow(block):
        time.sleep(0.15)
        return block * 2.0 + 1.0

    expected = (data * 2.0 + 1.0).sum(axis=0)
    with scheduler_context(procs.address, quiet=True) as conn:
        client = conn.client
        future = client.compute(x.map_blocks(slow, dtype=np.float64).sum(axis=0))
        pid_of = client.run(os.getpid)
        victim = None
        deadline = time.monotonic() + 20
        while victim is None and time.monotonic() < deadline:
            done = client.run_on_scheduler(
                lambda dask_scheduler: sum(ts.state == "memory" for ts in dask_scheduler.tasks.values()))
            busy = [addr for addr, keys in client.processing().items() if keys]
            if done >= 4 and busy:
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "the graph never got going"
        assert not future.done()
        killed = procs.kill_worker_process(pid_of[victim])
        assert procs.workers[killed].poll() is not None
        result = future.result(timeout=60)
        remaining = client.scheduler_info(n_workers=-1)["workers"]
    np.testing.assert_array_equal(result, expected)
    assert victim not in remaining and len(remaining) == 1


def test_stop_leaves_no_process(local_processes):
    procs = local_processes(1)
    family = [psutil.Process(pid) for pid in (procs.pids["scheduler"], *procs.pids["workers"])]
    family += [c for p in list(family) for c in p.children(recursive=True)]
    assert len(family) >= 3  # scheduler, nanny, worker
    procs.stop()
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not procs.scheduler_file.parent.exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_fast_with_remedy():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    t = time.monotonic()
    with pytest.raises(FiltershiftError) as err:
        with scheduler_context(address, connect_timeout=1.5, quiet=True):
            pass
    assert time.monotonic() - t < 5
    assert address in str(err.value) and "Remedy" in str(err.value)


def test_silent_listener_does_not_hang():
    """A port that accepts and never speaks: distributed.Client alone would wait forever here."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        t = time.monotonic()
        with pytest.raises(FiltershiftError, match="no answer"):
            with scheduler_context(address, connect_timeout=1.0, quiet=True):
                pass
        assert time.monotonic() - t < 4


def test_credentials_never_in_messages(capsys):
    port = _closed_port()
    for address in (f"tcp://alice:s3cret@127.0.0.1:{port}", f"tcp://127.0.0.1:{port}?token=s3cret"):
        with pytest.raises(FiltershiftError) as err:
            with scheduler_context(address, connect_timeout=1.0):
                pass
        assert "s3cret" not in str(err.value) and "127.0.0.1" in str(err.value)
    out = capsys.readouterr()
    assert "s3cret" not in out.err + out.out
    assert redact("tls://u:p@host:8786?x=1") == "tls://host:8786"


def test_scheduler_without_workers_is_a_clear_error(local_processes):
    procs = local_processes(0)
    with pytest.raises(FiltershiftError, match=r"0 worker\(s\)"):
        with scheduler_context(procs.address, worker_timeout=1.0, quiet=True):
            pass


def test_missing_or_bad_scheduler_file(tmp_path):
    with pytest.raises(FiltershiftError, match="scheduler file"):
        with scheduler_context(str(tmp_path / "nope.json")):
            pass
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FiltershiftError, match="not a dask scheduler file"):
        with scheduler_context(str(bad)):
            pass


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None, "scheduler": None}):
        assert resolve_scheduler().kind == "threads"
        assert resolve_scheduler(default="local").kind == "local"
        with dask.config.set(scheduler="processes"):
            assert (resolve_scheduler().kind, resolve_scheduler().source) == ("processes", "dask config scheduler")
            with dask.config.set({"scheduler-address": "127.0.0.1:9"}):
                c = resolve_scheduler()
                assert (c.kind, c.target, c.source) == ("address", "tcp://127.0.0.1:9",
                                                        "dask config scheduler-address")
                monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:8")
                assert resolve_scheduler().target == "tcp://127.0.0.1:8"
                c = resolve_scheduler("synchronous")
                assert (c.kind, c.source) == ("synchronous", "argument")
    with pytest.raises(FiltershiftError, match="unknown protocol"):
        resolve_scheduler("http://127.0.0.1:8787")


def test_default_is_threads_and_restores_config(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    import dask.threaded
    from dask.base import get_scheduler

    with dask.config.set({"scheduler-address": None, "scheduler": None}):
        with scheduler_context(n_workers=3) as conn:
            assert conn.kind == "threads"
            assert get_scheduler() is dask.threaded.get
            assert int(da.ones((100, 9), chunks=(10, 9)).sum().compute()) == 900
            assert dask.config.get("num_workers") == 3
        assert dask.config.get("scheduler") is None


def test_active_client_is_used_and_left_open(local_cluster, monkeypatch):
    from distributed import Client

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": None}), Client(local_cluster) as client:
        with scheduler_context() as conn:
            assert conn.kind == "client" and conn.client is client
            assert int(da.arange(10, chunks=5).sum().compute()) == 45
        assert client.status == "running"


def test_machine_defaults():
    from dask.system import cpu_count
    from distributed.system import MEMORY_LIMIT

    d = machine_defaults()
    assert d.n_workers == cpu_count() and d.threads_per_worker == THREADS_PER_WORKER == 2
    assert d.memory_limit == int(MEMORY_FRACTION * MEMORY_LIMIT / d.n_workers)
    assert machine_defaults(4, "2GB").memory_limit == 2_000_000_000
    with pytest.raises(FiltershiftError, match="memory limit"):
        machine_defaults(memory_limit="lots")
    with pytest.raises(FiltershiftError, match="n_workers"):
        machine_defaults(0)


def test_local_cluster_runs_in_worker_processes(capsys):
    x = da.arange(2000, chunks=500)
    with scheduler_context("local", n_workers=1, memory_limit="600MB", dashboard=False) as conn:
        assert conn.kind == "local"
        pids = set(x.map_blocks(lambda b: np.full(1, os.getpid()), chunks=(1,), dtype=np.int64).compute().tolist())
        assert int(x.sum().compute()) == 1999 * 1000
        limit = next(iter(conn.client.scheduler_info(n_workers=-1)["workers"].values()))["memory_limit"]
    assert os.getpid() not in pids and len(pids) == 1
    assert limit == 600_000_000
    assert f"1 workers x {THREADS_PER_WORKER} thread(s)" in capsys.readouterr().err


def test_local_cluster_config_pickles_and_other_threads_use_the_cluster():
    """A nanny (re)starts its worker with a pickled copy of this process's dask config: the scheduler set there
    must pickle (to "dask.distributed"), and computations from any thread of this process must reach the cluster."""
    import pickle
    import threading

    x = da.arange(2000, chunks=500)
    out = {}
    with scheduler_context("local", n_workers=1, memory_limit="600MB", dashboard=False, quiet=True):
        copy = pickle.loads(pickle.dumps(dask.config.global_config))
        worker = threading.Thread(target=lambda: out.setdefault("pids", set(x.map_blocks(
            lambda b: np.full(1, os.getpid()), chunks=(1,), dtype=np.int64).compute().tolist())))
        worker.start()
        worker.join(60)
        assert resolve_scheduler().kind == "client"
    assert copy["scheduler"] == "dask.distributed"
    assert out["pids"] and os.getpid() not in out["pids"]


def test_cli_check_and_defaults(local_cluster, capsys):
    from filtershift.cli import main

    assert main(["cluster", "check", "--scheduler", local_cluster]) == 0
    out = capsys.readouterr().out
    assert f"scheduler  {local_cluster}" in out and "workers    2, threads 2" in out
    assert main(["cluster", "check", "--scheduler", f"tcp://127.0.0.1:{_closed_port()}", "--timeout", "1"]) == 2
    assert "cannot reach a dask scheduler" in capsys.readouterr().err
    assert main(["cluster", "defaults", "--workers", "4", "--memory-limit", "3GiB"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"workers\s+4\n", out) and re.search(r"memory/worker\s+3\.00 GiB\n", out)
