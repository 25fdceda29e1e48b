"""Shared helpers of the benchmark scripts: the installed console script, child-process timing with peak RSS, and
BENCHMARKS.md output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"

#: One plain read-and-decode pass over a store's filters with zarr, sequential (the baseline of every ratio).
READ_ZARR = """
import numpy as np, zarr
a = zarr.open_array({path!r} + "/weights", mode="r"); step = a.chunks[0]; s = 0.0
for lo in range(0, a.shape[0], step):
    s += float(a[lo:lo + step].sum(dtype=np.float64))
"""

#: The same pass through filtershift's Dataset on the threaded dask scheduler.
READ_DASK = """
import dask, filtershift as fs
with dask.config.set(scheduler="threads"):
    float(fs.open_store({path!r})["weights"].sum(dtype="f8").compute())
"""

DEFAULT_SETUP = ("import numpy, h5py, zarr, dask, dask.array, xarray, pandas, filtershift.store.dataset, "
                 "filtershift.store.convert")

_CHILD = textwrap.dedent("""
    import json, resource, sys, time, threading, os
    import psutil
    peak = [0]
    def watch():
        me = psutil.Process()
        while True:
            try:
                rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                rss = 0
            peak[0] = max(peak[0], rss)
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()
    scope = {"__name__": "__bench__"}
    exec(compile(sys.argv[2], "<setup>", "exec"), scope)
    t0 = time.perf_counter()
    exec(compile(sys.argv[1], "<bench>", "exec"), scope)
    wall = time.perf_counter() - t0
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("BENCH-RESULT " + json.dumps({"wall_s": wall, "peak_rss": max(peak[0], self_peak)}))
""")


def run_child(code: str, env: dict | None = None, setup: str = DEFAULT_SETUP) -> dict:
    """Run ``code`` in a fresh Python process after ``setup`` (imports, not timed); return the wall time of
    ``code`` and the peak RSS of the process tree."""
    out = subprocess.run([sys.executable, "-c", _CHILD, code, setup], capture_output=True, text=True,
                         env={**os.environ, "FILTERSHIFT_PROGRESS": "0", **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    line = next(line for line in out.stdout.splitlines() if line.startswith("BENCH-RESULT "))
    result = json.loads(line[len("BENCH-RESULT "):])
    result["stdout"] = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("BENCH-RESULT"))
    return result


def console_script() -> str:
    """Path of the installed ``filtershift`` console script (what users run); exits with the remedy if missing."""
    exe = shutil.which("filtershift")
    if exe is None:
        sys.exit("filtershift is not on PATH: install the project first (README).")
    return exe


def run_tree(argv: list) -> tuple[float, int]:
    """Wall time and peak RSS of the process tree of ``argv`` (sampled every 50 ms, children included); exits with
    its stderr if it fails."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env={**os.environ, "FILTERSHIFT_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, root = [0], psutil.Process(proc.pid)

    def watch():
        while proc.poll() is None:
            try:
                rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err = proc.stderr.read()
    proc.wait()
    wall = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{err[-3000:]}")
    return wall, peak[0]


def machine() -> str:
    import psutil

    return (f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}")


def append_section(title: str, body: str, command: str | None = None) -> None:
    """Append a dated section to BENCHMARKS.md (the command defaults to this process's command line)."""
    command = command or "python " + " ".join(sys.argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title}\n\n{stamp}; {machine()}.\nCommand: `{command}`\n\n{body.strip()}\n"
    if not BENCHMARKS_MD.exists():
        BENCHMARKS_MD.write_text("# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`. Ratios "
                                 "compare timings taken in the same run on the same machine.\n")
    with BENCHMARKS_MD.open("a") as f:
        f.write(text)
    print(text)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"
