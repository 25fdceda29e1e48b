"""Shift-analysis benchmark: the full 3-pass analysis against one read pass and an in-memory numpy pipeline.

    python benchmarks/bench_shift.py --filters 10000000 [--workdir DIR] [--models 200] [--no-append]

A synthetic store (``filtershift.synthesize``, not timed) is analysed in fresh processes, each timed with its
peak RSS: (a) one plain read-and-decode pass over the filters (zarr, sequential; and dask, threaded); (b) the full
out-of-core analysis on the threaded scheduler: basis, distributions and kl_sym drift matrices for task, visual
category and depth, per-group bases for task and visual category (3 passes); (c) the in-memory pipeline the
reference analysis runs: load every filter, scale, PCA (covariance eigendecomposition, what scikit-learn's PCA
does for N >> 9), project, np.histogram per group and component, KL. Ratios compare timings of the same run.

This machine's speed drifts by tens of percent within minutes, so with ``--repeat N`` (default 3) every step runs
N times, in rounds that take the steps in turn (read, dask read, analysis, read, ...): a slow minute then slows
all steps alike. The table shows each step's median, min and max, and ratios of medians. The in-memory pipeline
runs once (it takes 20x the analysis's time).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import READ_DASK, READ_ZARR, append_section, gib, run_child

SETUP = """
import numpy as np, pandas as pd, zarr, dask, filtershift as fs, filtershift.stats, filtershift.store.dataset
from filtershift.store.format import Location, read_table
from filtershift.stats import fit_basis, distributions, drift, group_bases
# warm-up, not timed: numba kernels load from their on-disk cache (or compile once) here, for the argument types
# of a store on disk (read-only chunk arrays) as well as of in-memory arrays
import tempfile as _tf, dask as _dask
from filtershift.synth import synthesize as _synth
_w = np.random.default_rng(0).normal(size=(5000, 9)).astype("f4")
_ds = fs.from_arrays(_w, pd.DataFrame({"model_id": [0, 1], "conv_depth": [0, 0], "n": [2500, 2500]}),
                     pd.DataFrame({"model_id": [0, 1], "Task": ["a", "b"]}))
with _tf.TemporaryDirectory() as _d, _dask.config.set(scheduler="threads"):
    for _x in (_ds, fs.open_store(_synth(_d + "/w.zarr", n_filters=20000, n_models=4, format="zarr"))):
        drift(distributions(_x, fit_basis(_x), by="task")); group_bases(fit_basis(_x), by="task")
"""

MAKE = """
from filtershift.synth import synthesize
synthesize({path!r}, n_filters={n}, n_models={models}, seed=0, format="zarr", overwrite=True)
"""

FULL = """
from filtershift.stats import fit_basis, distributions, drift, group_bases
with dask.config.set(scheduler="threads"):
    ds = fs.open_store({path!r})
    basis = fit_basis(ds)
    for by in ("task", "visual_category", "depth"):
        drift(distributions(ds, basis, by=by))
    for by in ("task", "visual_category"):
        group_bases(basis, by=by)
    assert basis.stats_.passes == 3
"""

NUMPY = """
g = zarr.open_group({path!r}, mode="r"); m = g.attrs["filtershift"]; v = m["version"]
w = g["weights"][:m["n_filters"]]
rec = read_table(Location.of({path!r}), "records", v)
mod = read_table(Location.of({path!r}), "models", v).set_index("model_id")
x = w.astype(np.float64)
mx = np.abs(x).max(1, keepdims=True)
x = np.divide(x, mx, out=np.zeros_like(x), where=mx > 0)
mean = x.mean(0); x -= mean
vals, vecs = np.linalg.eigh(x.T @ x / (len(x) - 1))
order = np.argsort(vals)[::-1]; ratio = vals[order] / vals.sum(); comps = vecs[:, order].T
coef = x @ comps.T
lo, hi = coef.min(), coef.max()
norm = rec["conv_depth_norm"].to_numpy(np.float64).round(7)
for labels in (rec["model_id"].map(mod["Task"].map(lambda t: "Segmentation" if "Segmentation" in t else t)),
               rec["model_id"].map(mod["Visual Category"]),
               pd.cut(norm, np.arange(0, 1.1, 0.1), include_lowest=True).astype(str)):
    lab = np.repeat(np.asarray(labels), rec["n"].to_numpy())
    groups = sorted(set(lab))
    p = {{}}
    for gname in groups:
        sel = coef[lab == gname]
        hs = []
        for k in range(9):
            d = np.histogram(sel[:, k], 70, (lo, hi), density=True)[0]
            d[d == 0] = np.finfo(np.float32).eps
            hs.append(d / d.sum())
        p[gname] = np.array(hs)
    D = [[sum(ratio[k] * np.sum((p[a][k] - p[b][k]) * np.log(p[a][k] / p[b][k])) for k in range(9))
          for b in groups] for a in groups]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, default=10_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-numpy", action="store_true", help="skip the in-memory pipeline (it needs ~150 B/filter)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to BENCHMARKS.md")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the read and analysis steps (median shown)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1; got {args.repeat}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fs-bench-shift-"))
    work.mkdir(parents=True, exist_ok=True)
    path = str(work / "db.zarr")
    n = args.filters
    t = time.perf_counter()
    run_child(MAKE.format(path=path, n=n, models=args.models))
    print(f"store: {n:,} filters in {time.perf_counter() - t:.1f} s", flush=True)
    steps = [("zarr read", READ_ZARR), ("dask read", READ_DASK), ("full analysis", FULL)]
    walls = {name: [] for name, _ in steps}
    peaks = {name: 0 for name, _ in steps}
    for k in range(args.repeat):
        for name, code in steps:
            r = run_child(code.format(path=path), setup=SETUP)
            walls[name].append(r["wall_s"])
            peaks[name] = max(peaks[name], r["peak_rss"])
            print(f"{name:>16} (round {k + 1}/{args.repeat}): {r['wall_s']:.2f} s, peak RSS {gib(r['peak_rss'])}",
                  flush=True)
    results = {name: {"wall_s": statistics.median(walls[name]), "min_s": min(walls[name]),
                      "max_s": max(walls[name]), "peak_rss": peaks[name]} for name in walls}
    if not args.no_numpy:
        name = "in-memory numpy"
        try:
            results[name] = run_child(NUMPY.format(path=path), setup=SETUP)
            results[name].update(min_s=results[name]["wall_s"], max_s=results[name]["wall_s"])
            print(f"{name:>16}: {results[name]['wall_s']:.2f} s, peak RSS {gib(results[name]['peak_rss'])}",
                  flush=True)
        except RuntimeError as exc:
            failed = f"failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else 'killed'}"
            print(f"{name:>16}: {failed} (the kernel's OOM killer ends it when it outgrows memory)", flush=True)
            results[name] = {"failed": failed}
    read = results["zarr read"]["wall_s"]
    full = results["full analysis"]["wall_s"]
    rows = [f"Synthetic store: {n:,} filters ({gib(n * 36)} as float32), {args.models} models, default chunks. "
            "Full analysis = basis + distributions and kl_sym drift for task, visual category, depth + per-group "
            "bases for task and visual category, threaded scheduler, 3 passes. "
            f"Each step ran {args.repeat} time(s) in fresh processes, in interleaved rounds; wall = median.", "",
            "| step | wall s (median) | min-max s | / zarr read | filters/s | peak RSS |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "failed" in r:
            rows.append(f"| {name} | did not finish: killed by the out-of-memory killer in "
                        f"{psutil.virtual_memory().total / 2**30:.0f} GiB | | | | |")
            continue
        rows.append(f"| {name} | {r['wall_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | {r['wall_s'] / read:.2f} | "
                    f"{n / r['wall_s'] / 1e6:.1f} M | {gib(r['peak_rss'])} |")
    ratios = [f / z for f, z in zip(walls["full analysis"], walls["zarr read"])]
    rows.append(f"\nPer round, full analysis / zarr read: {', '.join(f'{x:.2f}x' for x in ratios)}.")
    summary = f"Full analysis / one read-and-decode pass (zarr), medians: {full / read:.2f}x"
    if "wall_s" in results.get("in-memory numpy", {}):
        summary += f"; full analysis / in-memory numpy pipeline: {full / results['in-memory numpy']['wall_s']:.2f}x"
    rows.append(summary + ".")
    body = "\n".join(rows)
    if args.no_append:
        print(body)
    else:
        append_section(f"Shift analysis, {n:,} filters", body)
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
