"""The context every computing entry point runs in: resolve the scheduler, start or connect it, close what it
opened. The choice order is :func:`filtershift.cluster.choice.resolve_scheduler`'s."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dask

from filtershift.cluster.choice import resolve_scheduler, using
from filtershift.cluster.local import has_bokeh, local_cluster, machine_defaults
from filtershift.cluster.remote import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
    connect,
    read_scheduler_file,
    redact,
    resolve_timeout,
)


@dataclass
class Connection:
    """What :func:`scheduler_context` yields: where dask computes now."""

    kind: str
    source: str
    address: str | None = None
    client: object = None
    cluster: object = None
    dashboard_link: str | None = None

    def describe(self) -> str:
        """One line for a log: kind, redacted address, and which rule chose it."""
        where = f" at {redact(self.address)}" if self.address else ""
        return f"dask {self.kind}{where} (chosen by {self.source})"


def _print(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"filtershift: {message}", file=sys.stderr, flush=True)


@contextmanager
def scheduler_context(scheduler=None, *, n_workers: int | None = None, memory_limit=None, dashboard: bool = True,
                      default: str = "threads", threads_per_worker: int | None = None,
                      connect_timeout: float | None = None, worker_timeout: float | None = None,
                      quiet: bool = False) -> Iterator[Connection]:
    """Run the enclosed dask computations on the chosen scheduler (see :mod:`filtershift.cluster` for the order).

    A cluster this context starts or a client it opens is closed on exit; an already active client is used and
    left open. ``n_workers``/``memory_limit``/``threads_per_worker`` size a ``"local"`` cluster (``n_workers`` also
    sets the pool size of ``"threads"``/``"processes"``). The dashboard link of a distributed scheduler is
    printed to stderr unless ``dashboard`` is false or ``quiet``.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        ``"tcp://HOST:PORT"`` (or ``tls://``, ``HOST:PORT``), a scheduler file, ``"threads"``, ``"processes"``,
        ``"synchronous"`` or ``"local"``; default: the environment, dask config or active client, else
        ``default``.
    n_workers : int, optional
        Workers of a ``"local"`` cluster (default one per core); pool size of ``"threads"``/``"processes"``.
    memory_limit : int or str, optional
        Memory limit per ``"local"`` worker, bytes or e.g. ``"4GB"``; default ``MEMORY_FRACTION`` of the
        memory shared among the workers.
    dashboard : bool, default True
        Print the dashboard link of a distributed scheduler.
    default : str, default "threads"
        Scheduler used when nothing else chooses one.
    threads_per_worker : int, optional
        Threads per ``"local"`` worker (default 2).
    connect_timeout : float, optional
        Seconds to reach a remote scheduler; default ``FILTERSHIFT_CONNECT_TIMEOUT``, else 5.
    worker_timeout : float, optional
        Seconds to wait for a remote scheduler's first worker; default ``FILTERSHIFT_WORKER_TIMEOUT``, else 30.
    quiet : bool, default False
        Print nothing.

    Yields
    ------
    Connection
        Where dask computes: ``kind``, ``source`` (the rule that chose it), ``address``, ``client``, ``cluster``,
        ``dashboard_link``.

    Raises
    ------
    filtershift.errors.FiltershiftError
        If a remote scheduler is unreachable or has no worker in time, or the local sizing is invalid.

    Examples
    --------
    >>> import filtershift
    >>> with filtershift.scheduler_context("local", n_workers=2) as conn:
    ...     basis = filtershift.fit_basis(filtershift.open_store("filters.zarr"))
    """
    choice = resolve_scheduler(scheduler, default=default)
    if choice.kind in ("threads", "processes", "synchronous"):
        options = {"scheduler": choice.kind}
        if n_workers is not None and choice.kind != "synchronous":
            options["num_workers"] = int(n_workers)
        with dask.config.set(options):
            yield Connection(choice.kind, choice.source)
        return
    if choice.kind == "config":
        yield Connection("config", choice.source)
        return
    if choice.kind == "client":
        client = choice.target
        with using(client):
            yield Connection("client", choice.source, client.scheduler.address, client, None, client.dashboard_link)
        return
    if choice.kind == "local":
        yield from _local(choice.source, n_workers, memory_limit, threads_per_worker, dashboard, quiet)
        return
    connect_timeout = resolve_timeout(connect_timeout, "FILTERSHIFT_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
    worker_timeout = resolve_timeout(worker_timeout, "FILTERSHIFT_WORKER_TIMEOUT", DEFAULT_WORKER_TIMEOUT)
    address = choice.target
    if choice.kind == "file":
        address = read_scheduler_file(choice.target, source=choice.source)
    client = connect(address, connect_timeout=connect_timeout, worker_timeout=worker_timeout, source=choice.source)
    try:
        link = client.dashboard_link if dashboard else None
        conn = Connection("distributed", choice.source, address, client, None, link)
        _print(conn.describe(), quiet)
        if link:
            _print(f"dashboard: {redact(link)}", quiet)
        with using(client):
            yield conn
    finally:
        client.close()


def _local(source, n_workers, memory_limit, threads_per_worker, dashboard, quiet):
    sizing = machine_defaults(n_workers, memory_limit, threads_per_worker)
    serve = dashboard and has_bokeh()
    with local_cluster(sizing, dashboard=serve) as (cluster, client):
        link = client.dashboard_link if serve else None
        conn = Connection("local", source, cluster.scheduler_address, client, cluster, link)
        _print(f"local cluster: {sizing.n_workers} workers x {sizing.threads_per_worker} thread(s), "
               f"{sizing.memory_limit / 2**30:.1f} GiB each", quiet)
        if dashboard and link:
            _print(f"dashboard: {redact(link)}", quiet)
        elif dashboard:
            _print("dashboard: not available (pip install 'bokeh>=3.1' to get one)", quiet)
        with using(client):
            yield conn
