"""A scheduler and workers as separate ``dask`` CLI processes on one host (tests, ``filtershift cluster local``).

Unlike ``LocalCluster`` (workers are children of this process) each process here leads its own process group,
so a test can SIGKILL one worker with its nanny, and a scheduler file and logs land in one directory, as on a
real deployment; ``distributed.SubprocessCluster`` (experimental) gives neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from filtershift.errors import FiltershiftError


def _dask_command() -> list[str]:
    return [sys.executable, "-m", "dask"]


def _child_env(extra: dict | None) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
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
