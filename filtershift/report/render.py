"""Render the report's figures on every core: each figure is drawn in a worker process and comes back as file bytes.

Drawing is the report's largest cost after the data passes (about 40 figures, each one or two matplotlib layout
and raster passes, which hold the GIL), so the figures are drawn by worker processes, one per available core,
started when the report starts so that their imports overlap the analysis (for :data:`MIN_FIGURES` figures or
more), and kept for later reports of the same process. A worker is ``python -m filtershift.report.render``
reading pickled jobs on its stdin and writing the encoded files on its stdout; this process writes the files. So
a worker never re-imports the caller's script (as multiprocessing's spawn would, running an unguarded script's
report again), writes nothing of a killed report, and exits when its parent is gone (its stdin closes). With one
core, or ``FILTERSHIFT_FIGURE_PROCESSES=0``, the figures are drawn in this process.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: The most worker processes drawing figures (a figure takes about a second; a report has about 40).
MAX_PROCESSES = 8
#: Fewer figures are drawn in the report's process: starting a worker (importing matplotlib) costs about as much
#: as drawing a few figures.
MIN_FIGURES = 8
_HEADER = struct.Struct("<Q")
_workers: list[_Worker] = []
_lock = threading.Lock()


@dataclass(frozen=True)
class FigureJob:
    """One figure: ``plot(**kwargs)`` drawn to ``stem.<format>`` for each of ``formats`` (SVG only if ``vector``)."""

    key: str
    plot: Callable
    kwargs: dict
    stem: str
    formats: tuple
    vector: bool
    dpi: int


class RenderError(RuntimeError):
    """A figure could not be drawn (the worker's traceback is in the message)."""


def processes() -> int:
    """How many worker processes draw figures: ``FILTERSHIFT_FIGURE_PROCESSES`` if set (0: none, draw here), else
    one per core this process may run on (at most :data:`MAX_PROCESSES`), none with a single core."""
    from filtershift.errors import InputError

    flag = os.environ.get("FILTERSHIFT_FIGURE_PROCESSES")
    if flag is not None:
        n = int(flag) if flag.strip().isdigit() else -1
        if n < 0:
            raise InputError(f"FILTERSHIFT_FIGURE_PROCESSES must be a whole number >= 0 (0: draw the figures in "
                             f"the report's process); got {flag!r}.")
        return min(n, MAX_PROCESSES)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 2 else min(cores, MAX_PROCESSES)


def start(n_figures: int) -> None:
    """Start the worker processes for about ``n_figures`` figures now (they import matplotlib while the caller
    goes on); none for fewer than :data:`MIN_FIGURES`."""
    if n_figures >= MIN_FIGURES:
        _pool(processes())


def render(jobs: list[FigureJob], directory: Path, on_done: Callable[[FigureJob], None] | None = None) -> dict:
    """Draw ``jobs`` into ``directory``; returns {key: {format: file name}} in the order of ``jobs``. ``on_done``
    is called as each figure is written (progress). A figure that fails raises :class:`RenderError`."""
    directory = Path(directory)
    workers = _pool(processes() if len(jobs) >= MIN_FIGURES else 0)
    out: dict = {}
    if not workers:
        for job in jobs:
            out[job.key] = _write(directory, draw(job))
            if on_done:
                on_done(job)
        return out
    todo = list(reversed(jobs))
    done_lock = threading.Lock()
    errors: list[BaseException] = []

    def serve(worker: _Worker) -> None:
        while True:
            with done_lock:
                if not todo or errors:
                    return
                job = todo.pop()
            try:
                files = worker.draw(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
                with done_lock:
                    errors.append(exc)
                return
            with done_lock:
                out[job.key] = _write(directory, files)
                if on_done:
                    on_done(job)

    threads = [threading.Thread(target=serve, args=(w,), name="filtershift-figures", daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {job.key: out[job.key] for job in jobs}


def draw(job: FigureJob) -> dict:
    """{file name: bytes} of one figure, drawn in this process."""
    from filtershift.report import figures

    return {f"{job.stem}.{fmt}": data for fmt, data in
            figures.encode(job.plot(**job.kwargs), job.formats, vector=job.vector, dpi=job.dpi).items()}


def _write(directory: Path, files: dict) -> dict:
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name.rsplit(".", 1)[1]: name for name in files}


class _Worker:
    """One ``python -m filtershift.report.render`` process and its pipes."""

    def __init__(self):
        import filtershift

        # the worker imports this very filtershift, also when the caller put it on sys.path by hand
        here = str(Path(filtershift.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "filtershift.report.render"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     env={**os.environ, "PYTHONPATH": path, "FILTERSHIFT_PROGRESS": "0"})
        self.lock = threading.Lock()        # one job at a time on the pipes (reports in several threads share it)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def draw(self, job: FigureJob) -> dict:
        try:
            with self.lock:
                _send(self.proc.stdin, job)
                ok, value = _receive(self.proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self.proc.kill()
            raise RenderError(f"the process drawing figure {job.key!r} ended (exit code {self.proc.wait()}); "
                              "see the messages above") from exc
        if not ok:
            raise RenderError(f"figure {job.key!r} could not be drawn:\n{value}")
        return value

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def _pool(n: int) -> list[_Worker]:
    """``n`` running workers (started when missing; dead ones replaced)."""
    with _lock:
        _workers[:] = [w for w in _workers if w.alive()]
        while len(_workers) < n:
            _workers.append(_Worker())
        return _workers[:n]


def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream):
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _serve(stdin, stdout) -> None:
    """The worker's loop: a job in, (True, files) or (False, traceback) out, until stdin closes."""
    import traceback

    import filtershift.report.figures  # noqa: F401  (matplotlib, imported before the first job)

    while True:
        try:
            job = _receive(stdin)
        except EOFError:
            return
        try:
            result = (True, draw(job))
        except Exception:  # noqa: BLE001 - sent back to the report's process, which raises it
            result = (False, traceback.format_exc())
        _send(stdout, result)


if __name__ == "__main__":
    # results go to the original stdout; anything printed while drawing goes to stderr, not into the pipe
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, results)
