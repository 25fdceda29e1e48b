"""A local cluster of worker processes: its size on this machine, its start and a close that lets workers exit.

Sizing (:func:`machine_defaults`): one worker process per core, two threads per worker (``deploy/bench_threads.py``:
the moments and histogram kernels are numba ``nogil``, so a second thread costs no GIL contention; on 2 cores,
2 workers x 2 threads averaged 6.1 M filters/s against 5.4 M for 2 x 1, and the second thread overlaps chunk reads
and decompression with compute), and a memory limit per worker of ``MEMORY_FRACTION * total / n_workers`` with
``MEMORY_FRACTION = 0.8``: the remaining fifth of the RAM (or of the cgroup limit) is left to the OS, the page cache
and the client process, which holds the small per-record tables and the report. ``LocalCluster``'s own default
differs (distributed's ``nprocesses_nthreads``: one thread per worker on up to 4 cores; memory ``"auto"``: the
total times the worker's share of the threads, nothing held back), so the sizes are passed to it explicitly.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from filtershift.errors import FiltershiftError

MEMORY_FRACTION = 0.8
THREADS_PER_WORKER = 2
#: Seconds a local worker process gets to exit once asked. LocalCluster.close() gives each nanny 5 s and kills the
#: worker after 4 ("Worker process still alive after 4.0 seconds, killing"): a worker's interpreter teardown
#: (numba, pandas, xarray loaded) takes longer than that on a loaded machine.
WORKER_CLOSE_TIMEOUT = 60.0


@dataclass(frozen=True)
class MachineDefaults:
    """The sizing of a default ``LocalCluster`` on this machine."""

    cores: int
    memory_total: int
    n_workers: int
    threads_per_worker: int
    memory_limit: int


def machine_defaults(n_workers: int | None = None, memory_limit=None,
                     threads_per_worker: int | None = None) -> MachineDefaults:
    """Workers = cores (cgroup- and affinity-aware), ``THREADS_PER_WORKER`` threads each, and
    ``MEMORY_FRACTION * total / n_workers`` bytes each unless ``memory_limit`` is given.

    Parameters
    ----------
    n_workers : int, optional
        Worker processes (default: one per core).
    memory_limit : int or str, optional
        Bytes per worker, or a size such as ``"4GB"``.
    threads_per_worker : int, optional
        Threads per worker (default ``THREADS_PER_WORKER``).

    Returns
    -------
    MachineDefaults
        Cores, total memory and the sizing.

    Raises
    ------
    filtershift.errors.FiltershiftError
        If a value is not positive or the memory limit is not a size.
    """
    from dask.system import cpu_count
    from dask.utils import parse_bytes
    from distributed.system import MEMORY_LIMIT

    cores = max(1, int(cpu_count()))
    if n_workers is not None and int(n_workers) < 1:
        raise FiltershiftError(f"n_workers must be at least 1, got {n_workers}")
    workers = int(n_workers) if n_workers is not None else cores
    threads = int(threads_per_worker or THREADS_PER_WORKER)
    if memory_limit is None:
        limit = int(MEMORY_FRACTION * MEMORY_LIMIT / workers)
    else:
        try:
            limit = int(parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit)
        except (ValueError, TypeError) as exc:
            raise FiltershiftError(f"memory limit {memory_limit!r} is not a size: give bytes or e.g. '4GB'") from exc
        if limit <= 0:
            raise FiltershiftError(f"memory limit must be positive, got {memory_limit!r}")
    return MachineDefaults(cores, int(MEMORY_LIMIT), workers, threads, limit)


def has_bokeh() -> bool:
    """Whether the dashboard can run (distributed serves it with bokeh)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def local_cluster(sizing: MachineDefaults, *, dashboard: bool) -> Iterator[tuple[object, object]]:
    """``(cluster, client)``: a ``LocalCluster`` of worker processes on 127.0.0.1 sized by ``sizing`` and a client
    on it (not the default client); both closed on exit, the workers given time to exit."""
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # the link printed is the real one
        cluster = LocalCluster(n_workers=sizing.n_workers, threads_per_worker=sizing.threads_per_worker,
                               memory_limit=sizing.memory_limit, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:8787" if dashboard else None)
    try:
        client = Client(cluster, set_as_default=False)
        try:
            yield cluster, client
        finally:
            client.close()
    finally:
        close_local_cluster(cluster)


def close_local_cluster(cluster, timeout: float = WORKER_CLOSE_TIMEOUT) -> None:
    """Close a ``LocalCluster`` (its client closed first) without killing workers that are still exiting.

    Each nanny is closed with ``timeout`` seconds for its worker process, then the cluster and its scheduler.

    Parameters
    ----------
    cluster : distributed.LocalCluster
        The cluster to close.
    timeout : float, default WORKER_CLOSE_TIMEOUT
        Seconds each worker process gets to exit.
    """

    async def close_workers():
        await asyncio.gather(*(w.close(timeout=timeout) for w in list(cluster.workers.values())),
                             return_exceptions=True)

    try:
        cluster.sync(close_workers)
    finally:
        cluster.close(timeout=timeout)
