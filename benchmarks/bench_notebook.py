"""The CNN-Filter-DB notebook's pipeline in RAM against ``filtershift report`` on the same data (issue #14: the
report with the default scheduler at most 1/4 of the notebook's wall, stretch 1/8).

The notebook's pipeline, written here with numpy/pandas/scipy as the notebook does it: read every filter of the
``dataset.h5`` and its meta table into memory, scale each filter by its max |w|, fit the PCA (covariance of all
filters), project, then for task, visual category and depth decile the per-group histograms of the 9 coefficients
(70 bins over the global range) and the variance-weighted symmetric KL matrix, and the per-record quality
(variance entropy of the SVD spectrum and sparsity, ``layer_quality_worker``). It draws no figure, so the
comparison favours it. Each round runs the notebook (a child process: its peak RSS is its own) and the report
(``filtershift report STORE --out ... --force -q``, default scheduler), in alternating order.

    python benchmarks/bench_notebook.py --filters 20000000 [--rounds 2] [--append]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile

from _common import append_section, console_script, gib, run_child, run_tree

NOTEBOOK = """
import h5py, numpy as np, pandas as pd, scipy.stats, warnings
with h5py.File({h5!r}, "r") as f:
    w = f["filters"][:].reshape(-1, 9)
meta = pd.read_hdf({h5!r}, "meta").reset_index()
ids = meta["filter_ids"].str.split(":", expand=True).astype(np.int64)
lo, hi = ids[0].to_numpy(), ids[1].to_numpy() + 1
peak = np.abs(w).max(1, keepdims=True)
s = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)
val, vec = np.linalg.eigh(np.cov(s, rowvar=False))
val, vec = val[::-1], vec[:, ::-1]
coef = (s - s.mean(0)) @ vec.astype(np.float32)
ratio = val / val.sum()
rng = (float(coef.min()), float(coef.max()))
per_filter = np.empty(len(w), np.int64)
for r, (a, b) in enumerate(zip(lo, hi)):
    per_filter[a:b] = r
depth = pd.cut(meta["conv_depth_norm"], np.arange(0, 1.1, 0.1), include_lowest=True).astype(str)
for labels in (meta["Task"].astype(str), meta["Visual Category"].astype(str), depth):
    codes, groups = pd.factorize(labels)
    fc = codes[per_filter]
    h = np.array([[np.histogram(coef[fc == g, j], 70, rng)[0] for j in range(9)] for g in range(len(groups))])
    p = (h + np.finfo(np.float32).eps) / (h + np.finfo(np.float32).eps).sum(2, keepdims=True)
    kl = np.einsum("gjb,j->g", p * np.log(p), ratio)[:, None] - np.einsum("gjb,hjb,j->gh", p, np.log(p), ratio)
    matrix = kl + kl.T
with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
    warnings.simplefilter("ignore")
    quality = []
    for a, b in zip(lo, hi):
        x = w[a:b]
        sv = np.linalg.svd(x - x.mean(0), full_matrices=False, compute_uv=False)
        v = sv ** 2 / max(len(x) - 1, 1)
        t = np.abs(x).max() / 100
        quality.append((scipy.stats.entropy(v, base=10), float((np.abs(x) < t).all(1).mean())))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filters", type=int, default=20_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    exe = console_script()
    rows, walls = [], {"notebook": [], "report": []}
    with tempfile.TemporaryDirectory(prefix="bench-notebook-") as tmp:
        h5, store = f"{tmp}/dataset.h5", f"{tmp}/db.zarr"
        subprocess.run([exe, "synth", "--filters", str(args.filters), "--models", "647", h5], check=True,
                       capture_output=True)
        subprocess.run([exe, "convert", h5, store], check=True, capture_output=True)
        for r in range(args.rounds):
            order = ("notebook", "report") if r % 2 == 0 else ("report", "notebook")
            for run in order:
                load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
                if run == "notebook":
                    res = run_child(NOTEBOOK.format(h5=h5), setup="import h5py, numpy, pandas, scipy.stats")
                    wall, peak = res["wall_s"], res["peak_rss"]
                else:
                    wall, peak = run_tree([exe, "report", store, "--out", f"{tmp}/rep", "--force", "-q"])
                walls[run].append(wall)
                rows.append(f"| {r + 1} | {run} | {wall:.1f} | {gib(peak)} | {load} |")
                print(rows[-1], flush=True)
    nb, rep = statistics.median(walls["notebook"]), statistics.median(walls["report"])
    body = (f"{args.filters:,} filters, 647 models (`filtershift synth`, then `convert`).\n\n"
            "| round | run | wall s | peak RSS | load average |\n|---|---|---|---|---|\n" + "\n".join(rows)
            + f"\n\nMedians: notebook pipeline {nb:.1f} s, `filtershift report` (default scheduler) {rep:.1f} s: "
              f"the report takes {rep / nb:.2f}x the notebook's wall (target at most 0.25, stretch 0.125).")
    print(body)
    if args.append:
        append_section(f"The report against the notebook's pipeline, {args.filters:,} filters", body)


if __name__ == "__main__":
    main()
