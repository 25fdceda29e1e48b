"""Where dask computes: scheduler choice, machine-sized defaults and local multi-process clusters.

Every entry point that computes runs inside :func:`scheduler_context`. The scheduler is chosen in this order:

1. the explicit ``scheduler`` argument (``--scheduler`` on the command line);
2. the ``DASK_SCHEDULER_ADDRESS`` environment variable;
3. dask config: ``scheduler-address``, then ``scheduler``;
4. a distributed ``Client`` already active in this process;
5. the default: ``"threads"`` for the Python API, ``"local"`` (a machine-sized ``LocalCluster``) for the CLI.

A scheduler is one of ``"tcp://HOST:PORT"`` (or ``tls://``, ``HOST:PORT``), a scheduler file written by
``dask scheduler --scheduler-file``, ``"threads"``, ``"processes"``, ``"synchronous"`` or ``"local"``.

Sizing of ``"local"`` (see :func:`machine_defaults`): one worker process per core, two threads per worker
(``deploy/bench_threads.py``: the moments and histogram kernels are numba ``nogil``, so a second thread costs
no GIL contention; on 2 cores, 2 workers x 2 threads averaged 6.1 M filters/s against 5.4 M for 2 x 1, and the
second thread overlaps chunk reads and decompression with compute), and a memory limit per worker of
``MEMORY_FRACTION * total / n_workers`` with ``MEMORY_FRACTION = 0.8``: the remaining fifth of the RAM (or of
the cgroup limit) is left to the OS, the page cache and the client process, which holds the small per-record
tables and the report.

Connecting to a remote scheduler is bounded by ``connect_timeout`` (argument, else ``FILTERSHIFT_CONNECT_TIMEOUT``,
else 5 s): an unreachable or silent address raises :class:`~filtershift.errors.FiltershiftError` instead of
hanging. Addresses are printed without user info or query strings, so credentials never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dask

from filtershift.errors import FiltershiftError, reason

MEMORY_FRACTION = 0.8
THREADS_PER_WORKER = 2
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_WORKER_TIMEOUT = 30.0
#: Seconds a local worker process gets to exit once asked. LocalCluster.close() gives each nanny 5 s and kills the
#: worker after 4 ("Worker process still alive after 4.0 seconds, killing"): a worker's interpreter teardown
#: (numba, pandas, xarray loaded) takes longer than that on a loaded machine.
WORKER_CLOSE_TIMEOUT = 60.0
LOCAL_SCHEDULERS = {"threads": "threads", "threaded": "threads", "processes": "processes",
                    "multiprocessing": "processes", "synchronous": "synchronous", "sync": "synchronous",
                    "single-threaded": "synchronous"}
_DISTRIBUTED_NAMES = {"distributed", "dask.distributed"}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):\d+$")
_SCHEMES = ("tcp://", "tls://", "ws://", "wss://", "inproc://", "ucx://")


def redact(address: str) -> str:
    """``address`` without user info (``user:secret@``) or query string, safe to print or log."""
    text = str(address)
    text = re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@", r"\1", text)
    return text.split("?", 1)[0]


def _scrubbed(exc: BaseException) -> str:
    """An exception's text for a message, without user info (``user:secret@``) or query strings of addresses."""
    text = re.sub(r"[^\s/'\"@]+@", "", reason(exc))
    return re.sub(r"\?[^\s'\"]*", "", text)


@dataclass(frozen=True)
class Choice:
    """A resolved scheduler: ``kind`` is a local scheduler name, ``"local"``, ``"address"``, ``"file"`` or
    ``"client"``; ``source`` says which rule picked it."""

    kind: str
    target: object = None
    source: str = "default"


class ClientScheduler:
    """The dask ``scheduler`` setting that runs every graph of this process (any thread) on ``client``.

    Setting the Client itself there breaks local clusters: a nanny starts or restarts its worker with a copy of this
    process's dask config, the Client in it cannot pickle, and after a memory-limit restart the worker never came
    back and the computation hung. This object pickles to ``"dask.distributed"`` (a worker's own client)."""

    def __init__(self, client):
        self.client = client

    def __call__(self, dsk, keys, **kwargs):
        return self.client.get(dsk, keys, **kwargs)

    def __reduce__(self):
        return str, ("dask.distributed",)


@contextmanager
def _using(client):
    """Run every dask computation of this process on ``client`` while the context is open."""
    with client.as_current(), dask.config.set(scheduler=ClientScheduler(client)):
        yield


def _classify(value, source: str) -> Choice:
    if isinstance(value, ClientScheduler):
        return Choice("client", value.client, source)
    if not isinstance(value, str):
        from distributed import Client

        if isinstance(value, Client):
            return Choice("client", value, source)
        raise FiltershiftError(f"scheduler {value!r} (from {source}) is not understood: give an address "
                               "tcp://HOST:PORT, a scheduler file, threads, processes, synchronous or local")
    text = value.strip()
    low = text.lower()
    if low in LOCAL_SCHEDULERS:
        return Choice(LOCAL_SCHEDULERS[low], None, source)
    if low == "local":
        return Choice("local", None, source)
    if low.startswith(_SCHEMES):
        return Choice("address", text, source)
    if _HOST_PORT.match(text) and not Path(text).exists():
        return Choice("address", f"tcp://{text}", source)
    if "://" in text:
        raise FiltershiftError(f"scheduler address {redact(text)} (from {source}) has an unknown protocol: "
                               f"use one of {', '.join(s.rstrip(':/') for s in _SCHEMES[:2])}://HOST:PORT")
    return Choice("file", text, source)


def _active_client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def resolve_scheduler(scheduler=None, *, default: str = "threads") -> Choice:
    """Pick the scheduler by the documented order; nothing is started or connected."""
    if scheduler is not None and scheduler != "":
        return _classify(scheduler, "argument")
    env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if env:
        return _classify(env, "DASK_SCHEDULER_ADDRESS")
    address = dask.config.get("scheduler-address", None)
    if address:
        return _classify(address, "dask config scheduler-address")
    configured = dask.config.get("scheduler", None)
    if configured is not None and not (isinstance(configured, str) and configured.lower() in _DISTRIBUTED_NAMES):
        if callable(configured) and not isinstance(configured, ClientScheduler) and not hasattr(configured, "submit"):
            return Choice("config", configured, "dask config scheduler")
        return _classify(configured, "dask config scheduler")
    client = _active_client()
    if client is not None:
        return Choice("client", client, "active client")
    return _classify(default, "default")


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
    ``MEMORY_FRACTION * total / n_workers`` bytes each unless ``memory_limit`` is given."""
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


def _timeout(value, env: str, default: float) -> float:
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise FiltershiftError(f"{env}={raw!r} is not a number of seconds") from exc
    value = float(value)
    if value <= 0:
        raise FiltershiftError(f"timeout must be positive seconds, got {value:g}")
    return value


async def _identify(address: str, timeout: float) -> dict:
    from distributed.comm import connect
    from distributed.security import Security

    comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
    try:
        await comm.write({"op": "identity"})
        return await comm.read()
    finally:
        comm.abort()


def probe(address: str, timeout: float = DEFAULT_CONNECT_TIMEOUT, *, source: str = "argument") -> dict:
    """Ask ``address`` who it is within ``timeout`` seconds; raise FiltershiftError unless a dask scheduler answers.

    ``distributed.Client(timeout=...)`` bounds the TCP connect but not the handshake: a port that accepts and
    stays silent would hang it forever, so every connection is probed first."""
    shown = redact(address)
    remedy = ("Remedy: start the scheduler (deploy/local-cluster.sh start, or `dask scheduler`), check host, port "
              "and firewall, or compute locally with --scheduler local (unset DASK_SCHEDULER_ADDRESS if it is set); "
              "FILTERSHIFT_CONNECT_TIMEOUT raises the limit.")
    try:
        answer = asyncio.run(asyncio.wait_for(_identify(address, timeout), timeout))
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        why = ("no answer: nothing listens there, or it does not speak the dask protocol"
               if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timed out" in str(exc)
               else f"connection failed: {_scrubbed(exc)}")
        raise FiltershiftError(f"cannot reach a dask scheduler at {shown} (from {source}) within {timeout:g} s "
                               f"({why}). {remedy}") from None
    except (ValueError, TypeError) as exc:
        raise FiltershiftError(f"dask scheduler address {shown} (from {source}) is malformed ({_scrubbed(exc)}): "
                               "expected tcp://HOST:PORT") from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        kind = answer.get("type") if isinstance(answer, dict) else type(answer).__name__
        raise FiltershiftError(f"{shown} (from {source}) answered but is not a dask scheduler ({kind}): "
                               "give the scheduler's address (default port 8786), not a worker's or dashboard's")
    return answer


def read_scheduler_file(path, *, source: str = "argument") -> str:
    """The address in a scheduler file written by ``dask scheduler --scheduler-file``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FiltershiftError(f"scheduler {path!r} (from {source}) is neither threads/processes/synchronous/local, "
                               "an address tcp://HOST:PORT, nor an existing scheduler file: start the cluster "
                               "(deploy/local-cluster.sh start writes one) or fix the path")
    try:
        address = json.loads(p.read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FiltershiftError(f"scheduler file {p} is not a dask scheduler file ({_scrubbed(exc)}): "
                               "it must be JSON with an 'address' key, as written by dask scheduler "
                               "--scheduler-file") from None
    return str(address)


def _print(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"filtershift: {message}", file=sys.stderr, flush=True)


def _has_bokeh() -> bool:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str, *, connect_timeout: float, worker_timeout: float, min_workers: int = 1,
            source: str = "argument"):
    """A ``distributed.Client`` on ``address``, after a bounded probe, with at least ``min_workers`` workers."""
    from distributed import Client

    probe(address, connect_timeout, source=source)
    try:
        client = Client(address, timeout=connect_timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise FiltershiftError(f"cannot connect a client to the dask scheduler at {redact(address)} "
                               f"({_scrubbed(exc)}): check that the scheduler is still running") from None
    if min_workers > 0:
        try:
            client.wait_for_workers(min_workers, timeout=worker_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            client.close()
            raise FiltershiftError(f"the dask scheduler at {redact(address)} has {n} worker(s) after "
                                   f"{worker_timeout:g} s, {min_workers} needed: start workers "
                                   f"(dask worker {redact(address)}) or raise FILTERSHIFT_WORKER_TIMEOUT") from None
    return client


@contextmanager
def scheduler_context(scheduler=None, *, n_workers: int | None = None, memory_limit=None, dashboard: bool = True,
                      default: str = "threads", threads_per_worker: int | None = None,
                      connect_timeout: float | None = None, worker_timeout: float | None = None,
                      quiet: bool = False) -> Iterator[Connection]:
    """Run the enclosed dask computations on the chosen scheduler (see the module docstring for the order).

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
        with _using(client):
            yield Connection("client", choice.source, client.scheduler.address, client, None, client.dashboard_link)
        return
    if choice.kind == "local":
        yield from _local_cluster(choice, n_workers, memory_limit, threads_per_worker, dashboard, quiet)
        return
    connect_timeout = _timeout(connect_timeout, "FILTERSHIFT_CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT)
    worker_timeout = _timeout(worker_timeout, "FILTERSHIFT_WORKER_TIMEOUT", DEFAULT_WORKER_TIMEOUT)
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
        with _using(client):
            yield conn
    finally:
        client.close()


def _local_cluster(choice, n_workers, memory_limit, threads_per_worker, dashboard, quiet):
    from distributed import Client, LocalCluster

    sizing = machine_defaults(n_workers, memory_limit, threads_per_worker)
    dashboard_address = "127.0.0.1:8787" if dashboard and _has_bokeh() else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # the link printed is the real one
        cluster = LocalCluster(n_workers=sizing.n_workers, threads_per_worker=sizing.threads_per_worker,
                               memory_limit=sizing.memory_limit, processes=True, host="127.0.0.1",
                               dashboard_address=dashboard_address)
    try:
        client = Client(cluster, set_as_default=False)
        try:
            link = client.dashboard_link if dashboard_address else None
            conn = Connection("local", choice.source, cluster.scheduler_address, client, cluster, link)
            _print(f"local cluster: {sizing.n_workers} workers x {sizing.threads_per_worker} thread(s), "
                   f"{sizing.memory_limit / 2**30:.1f} GiB each", quiet)
            if dashboard and link:
                _print(f"dashboard: {redact(link)}", quiet)
            elif dashboard:
                _print("dashboard: not available (pip install 'bokeh>=3.1' to get one)", quiet)
            with _using(client):
                yield conn
        finally:
            client.close()
    finally:
        close_local_cluster(cluster)


def close_local_cluster(cluster, timeout: float = WORKER_CLOSE_TIMEOUT) -> None:
    """Close a ``LocalCluster`` (its client closed first) without killing workers that are still exiting: each
    nanny is closed with ``timeout`` seconds for its worker process, then the cluster and its scheduler."""

    async def close_workers():
        await asyncio.gather(*(w.close(timeout=timeout) for w in list(cluster.workers.values())),
                             return_exceptions=True)

    try:
        cluster.sync(close_workers)
    finally:
        cluster.close(timeout=timeout)


def _dask_command() -> list[str]:
    return [sys.executable, "-m", "dask"]


def _child_env(extra: dict | None) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.update(extra or {})
    return env


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class LocalProcesses:
    """A scheduler and workers started as separate ``dask`` CLI processes on loopback."""

    address: str
    scheduler_file: Path
    directory: Path
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)
    _own_directory: bool = False

    @property
    def pids(self) -> dict:
        """Process ids: ``{"scheduler": pid, "workers": [pid, ...]}`` (each the leader of its process group)."""
        return {"scheduler": self.scheduler.pid, "workers": [w.pid for w in self.workers]}

    def kill_worker_process(self, pid: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the process group of the started worker that contains process ``pid``;
        return the index of that worker."""
        group = os.getpgid(pid)
        for i, w in enumerate(self.workers):
            if w.pid == group:
                os.killpg(group, sig)
                w.wait(10)
                return i
        raise ValueError(f"process {pid} belongs to none of the started workers")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate workers, then the scheduler (SIGTERM, SIGKILL after ``timeout``); idempotent."""
        for procs in (self.workers, [self.scheduler]):
            for p in procs:
                _signal_group(p, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for p in procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(p, signal.SIGKILL)
                    p.wait(5)
                _signal_group(p, signal.SIGKILL)
        for p in (self.scheduler, *self.workers):
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_scheduler_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FiltershiftError(f"dask scheduler exited with code {proc.returncode}; its log {log}:\n{_tail(log)}")
        if path.is_file():
            try:
                return json.loads(path.read_text())["address"]
            except (ValueError, KeyError):
                pass
        time.sleep(0.1)
    raise FiltershiftError(f"dask scheduler wrote no scheduler file within {timeout:g} s; its log {log}:\n{_tail(log)}")


def start_local_processes(n_workers: int = 2, *, host: str = "127.0.0.1", port: int = 0, nthreads: int = 1,
                          memory_limit="1GB", directory=None, dashboard: bool = False, nanny: bool = True,
                          idle_timeout: str | None = None, death_timeout: str | None = "60s",
                          timeout: float = 60.0, env: dict | None = None,
                          wrap: list[str] | None = None) -> LocalProcesses:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on ``host``; wait until all joined.

    Each process leads its own process group (a nanny and its worker die together). Logs, the scheduler file
    and nothing else go to ``directory`` (a temporary one, removed by ``stop()``, when not given).
    ``idle_timeout`` (scheduler) and ``death_timeout`` (workers) let orphans end themselves if the owner dies.
    ``wrap`` prefixes each worker's command (e.g. ``unshare`` or ``setpriv``: workers with another view of the
    machine than the client's). Call ``stop()`` or use the result as a context manager."""
    own = directory is None
    directory = Path(tempfile.mkdtemp(prefix="filtershift-cluster-")) if own else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    child_env = _child_env(env)
    cmd = [*_dask_command(), "scheduler", "--host", host, "--port", str(port), "--scheduler-file", str(scheduler_file)]
    cmd += ["--dashboard-address", f"{host}:0"] if dashboard else ["--no-dashboard"]
    if idle_timeout:
        cmd += ["--idle-timeout", str(idle_timeout)]
    log = directory / "scheduler.log"
    with open(log, "wb") as out:
        sched = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=child_env, start_new_session=True, cwd=directory)
    procs = LocalProcesses("", scheduler_file, directory, sched, [], own)
    try:
        procs.address = _wait_scheduler_file(scheduler_file, sched, log, timeout)
        for i in range(n_workers):
            wcmd = [*(wrap or []), *_dask_command(), "worker", "--scheduler-file", str(scheduler_file), "--host", host,
                    "--nthreads", str(nthreads), "--memory-limit", str(memory_limit), "--no-dashboard",
                    "--name", f"worker-{i}", "--local-directory", str(directory / f"worker-{i}")]
            wcmd += ["--nanny"] if nanny else ["--no-nanny"]
            if death_timeout:
                wcmd += ["--death-timeout", str(death_timeout)]
            with open(directory / f"worker-{i}.log", "wb") as out:
                procs.workers.append(subprocess.Popen(wcmd, stdout=out, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL, env=child_env,
                                                      start_new_session=True, cwd=directory))
        _wait_workers(procs, n_workers, timeout)
    except BaseException:
        procs.stop()
        raise
    return procs


def _wait_workers(procs: LocalProcesses, n: int, timeout: float) -> None:
    from distributed import Client

    with Client(procs.address, timeout=timeout, set_as_default=False) as client:
        deadline = time.monotonic() + timeout
        while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
            for i, w in enumerate(procs.workers):
                if w.poll() is not None:
                    log = procs.directory / f"worker-{i}.log"
                    raise FiltershiftError(f"dask worker {i} exited with code {w.returncode}; its log {log}:\n"
                                           f"{_tail(log)}")
            if time.monotonic() > deadline:
                raise FiltershiftError(f"only {len(client.scheduler_info(n_workers=-1)['workers'])} of {n} dask "
                                       f"workers joined {procs.address} within {timeout:g} s; logs in "
                                       f"{procs.directory}")
            time.sleep(0.1)
