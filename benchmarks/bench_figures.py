"""The report's figures stage, old checkout against new, interleaved (issue #14: at most 10 s at 1e6 and 2e7).

    python benchmarks/bench_figures.py STORE --old /work/main --new . --rounds 3 [--append]

Runs ``filtershift report STORE --force -q`` with PYTHONPATH set to each checkout in turn (old, new, old, new,
...) and reads the stage times from each run's run.log: "figures and tables" is from that stage's start to the
run's "published" line (figures, tables, results.json, the page). Prints medians and the new/old ratio of each
round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import append_section


def _stamp(line: str) -> float:
    return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(store: str, checkout: str, out: Path) -> dict:
    """One report of ``store`` by ``checkout``: wall, figures-stage seconds and the number of figure files."""
    env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve()), "FILTERSHIFT_PROGRESS": "0"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "filtershift.cli", "report", store, "--out", str(out), "--force", "-q"],
                   env=env, check=True, cwd=out.parent, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    log = (out / "latest" / "run.log").read_text().splitlines()
    start = next(_stamp(x) for x in log if x.endswith("stage: figures and tables"))
    end = next(_stamp(x) for x in log if " published " in x)
    n = len(list((out / "latest" / "figures").glob("*.png")))
    return {"wall": wall, "figures": end - start, "n_png": n}


#: Draw the figures in the report's process and count the CPU seconds of drawing them (less noisy under load).
_CPU = """
import json, os, sys, time
os.environ["FILTERSHIFT_FIGURE_PROCESSES"] = "0"
from filtershift.report import build, render
real, cpu = render.render, []
def timed(jobs, directory, on_done=None):
    t = time.process_time()
    out = real(jobs, directory, on_done)
    cpu.append(time.process_time() - t)
    return out
render.render = timed
build.build_report(sys.argv[1], sys.argv[2], None, scheduler="threads", force=True)
print(json.dumps(cpu[0]))
"""


def draw_cpu(store: str, checkout: str, out: Path) -> float:
    """CPU seconds of drawing every figure of a report of ``store`` by ``checkout``, in one process."""
    env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve()), "FILTERSHIFT_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-c", _CPU, store, str(out)], env=env, check=True, cwd=out.parent,
                          capture_output=True, text=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--old", required=True, help="checkout of the old code (e.g. /work/main)")
    ap.add_argument("--new", default=".", help="checkout of the new code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="also count the CPU seconds of drawing in one process")
    ap.add_argument("--append", action="store_true", help="append a section to BENCHMARKS.md")
    a = ap.parse_args()
    rows, res = [], {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            for which, checkout in (("old", a.old), ("new", a.new)):
                r = run(a.store, checkout, Path(tmp) / which)
                r["cpu"] = draw_cpu(a.store, checkout, Path(tmp) / f"{which}-cpu") if a.cpu else float("nan")
                res[which].append(r)
                load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
                rows.append(f"| {i + 1} | {which} | {r['n_png']} | {r['figures']:.1f} | {r['cpu']:.1f} | "
                            f"{r['wall']:.1f} | {load} |")
                print(rows[-1], flush=True)
    summary = " ".join(_summary(res, k, t) for k, t in (("figures", "figures stage"), ("cpu", "drawing CPU"))
                       if not any(x[k] != x[k] for x in res["old"]))
    print(summary)
    if a.append:
        body = ("| round | code | PNG files | figures and tables s | drawing CPU s (one process) | report wall s "
                "| load after |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + summary + "\n")
        append_section(f"Report figures, old against new: {a.store}", body,
                       command=" ".join(["python benchmarks/bench_figures.py", *sys.argv[1:]]))


def _summary(res: dict, key: str, title: str) -> str:
    ratios = [n[key] / o[key] for o, n in zip(res["old"], res["new"])]
    med = {k: statistics.median(x[key] for x in v) for k, v in res.items()}
    return (f"Median {title}: old {med['old']:.1f} s, new {med['new']:.1f} s; new/old per round "
            + ", ".join(f"{x:.2f}" for x in ratios) + f" (median {statistics.median(ratios):.2f}).")


if __name__ == "__main__":
    main()
