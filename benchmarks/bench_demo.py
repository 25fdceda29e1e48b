"""What users run first: ``filtershift demo`` with a cleared numba cache (a fresh install) and with a warm one,
and ``filtershift report`` on the demo's store (issue #14: the demo under 45 s from a fresh install, figures at
most 10 s).

Each round runs the three commands as subprocesses of the installed console script, in that order, each with its
own ``NUMBA_CACHE_DIR`` (cleared for the cold demo), and prints their wall time, the demo's own step times
(demo-summary.json: synthesize, convert, compile wait, report) and the report's stage times (run.log). The
machine is shared: compare the ratios within one round. ``--append`` adds the table to BENCHMARKS.md.

    python benchmarks/bench_demo.py [--filters 1000000] [--rounds 1] [--scheduler local] [--append]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import append_section, console_script

STAGE = re.compile(r"^(\d\d:\d\d:\d\d,\d+) INFO filtershift.report: (stage: .*|published .*)$")


def stages(run_log: Path) -> dict:
    """Seconds per report stage, from the run.log stage lines (each stage lasts until the next line; the log has
    times of day, so a stage across midnight wraps)."""
    marks = []
    for line in run_log.read_text().splitlines():
        m = STAGE.match(line[11:]) if len(line) > 11 else None
        if m:
            t = dt.datetime.strptime(m.group(1), "%H:%M:%S,%f")
            marks.append((m.group(2).removeprefix("stage: ") if m.group(2).startswith("stage") else "end", t))
    day = 86400.0
    return {a[0]: (b[1] - a[1]).total_seconds() % day for a, b in zip(marks, marks[1:])}


def run(argv: list, numba_dir: Path, clear: bool) -> float:
    if clear:
        shutil.rmtree(numba_dir, ignore_errors=True)
    numba_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_dir), "FILTERSHIFT_PROGRESS": "0"}
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filters", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--scheduler", default=None, help="--scheduler of both commands (default: the CLI's)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    exe = console_script()
    sched = ["--scheduler", args.scheduler] if args.scheduler else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        tmp = Path(tmp)
        for r in range(args.rounds):
            before = load()
            for label, clear in (("demo, cleared numba cache", True), ("demo, warm numba cache", False)):
                out = tmp / f"demo-{r}-{int(clear)}"
                wall = run([exe, "demo", "--out", str(out), "--filters", str(args.filters), *sched],
                           tmp / "numba", clear)
                t = json.loads((out / "demo-summary.json").read_text())["timings"]
                log = next((out / "report" / "runs").glob("*/run.log"))
                rows.append((r, label, wall, t, stages(log), before))
            wall = run([exe, "report", str(out / "db.zarr"), "--out", str(tmp / f"report-{r}"), *sched],
                       tmp / "numba", False)
            log = next((tmp / f"report-{r}" / "runs").glob("*/run.log"))
            rows.append((r, "report on the demo store, warm cache", wall, {}, stages(log), before))
    names = ["synthesize_s", "convert_s", "compile_wait_s", "report_s"]
    stage_names = list(dict.fromkeys(k for row in rows for k in row[4]))
    head = ["round", "run", "wall s", *[n.removesuffix("_s") for n in names], *stage_names, "load before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, label, wall, t, st, before in rows:
        cells = [str(r + 1), label, f"{wall:.1f}", *[f"{t[n]:.1f}" if n in t else "" for n in names],
                 *[f"{st[k]:.1f}" if k in st else "" for k in stage_names], before]
        lines.append("| " + " | ".join(cells) + " |")
    cold = [w for _, label, w, *_ in rows if "cleared" in label]
    warm = [w for _, label, w, *_ in rows if "warm numba" in label]
    summary = (f"Median wall: demo from a cleared numba cache {statistics.median(cold):.1f} s, with a warm cache "
               f"{statistics.median(warm):.1f} s (ratio {statistics.median(cold) / statistics.median(warm):.2f}).")
    body = f"{args.filters:,} filters.\n\n" + "\n".join(lines) + "\n\n" + summary
    print(body)
    if args.append:
        append_section(f"Demo and report, {args.filters:,} filters", body)


if __name__ == "__main__":
    main()
