"""Quality benchmark: per-layer quality out of core against one read pass and the per-layer in-memory reference.

    python benchmarks/bench_quality.py --filters 1000000 [--models 40] [--resnets 2] [--workdir DIR] [--append]

Each figure is a fresh process with its peak RSS. On a synthetic CNN-Filter-DB-like store (``synthesize``, not
timed): (a) one threaded dask read pass; (b) ``layer_quality`` cold (engine passes 1 and 2, no layer channels so
no orthogonality pass), and the finalize step alone once the passes are cached (what quality costs on top of a
shift analysis); (c) the reference done in memory: load every filter, then per record the numpy port of
torchconvquality (SVD of the centred filters, sparsity mask, clean SVD). On ResNet-50-shaped random layers in
memory (``from_arrays``; 16 layers of 3x3 convs, 1.26 M filters per model): (d) the orthogonality pass against
(e) a numpy loop over the layers. ``--append`` adds the table to BENCHMARKS.md. At most 1e8 filters (the in-memory
reference needs about 75 bytes per filter).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import READ_DASK, append_section, gib, run_child

MAX_FILTERS = 100_000_000

SETUP = """
import time
import numpy as np, pandas as pd, zarr, dask, filtershift.store.dataset as sd
from filtershift.store.format import Location, read_table
from filtershift.stats import record_stats
from filtershift.stats.quality import layer_quality, layer_orthogonality, orthogonality
# warm-up, not timed: numba kernels load from their cache (or compile once) here
_w = np.random.default_rng(0).normal(size=(5000, 9)).astype("f4")
_ds = sd.from_arrays(_w, pd.DataFrame({"model_id": [0, 1], "conv_depth": [0, 0], "n": [2500, 2500]}),
                     pd.DataFrame({"model_id": [0, 1], "Task": ["a", "b"]}))
layer_quality(_ds)
"""

MAKE = """
from filtershift.synth import synthesize
synthesize({path!r}, n_filters={n}, n_models={models}, seed=0, format="zarr", overwrite=True)
"""

QUALITY = """
with dask.config.set(scheduler="threads"):
    stats = record_stats(sd.open_store({path!r}))
    layer_quality(stats)
    t0 = time.perf_counter()
    layer_quality(stats)
    print("finalize_s", time.perf_counter() - t0)
"""

REFERENCE = """
L, X0, KK, B = 1.2618047, 2.30436435, 0.88767525, -0.31050834
def entropy(w):
    n = len(w)
    if n < 2:
        return 0.0, 0.0
    s = np.linalg.svd(w - w.mean(0), compute_uv=False)
    v = s ** 2 / (n - 1)
    p = v / (v.sum() or 1)
    p = p[p > 0]
    e = -(p * np.log10(p)).sum()
    return e, e / (L / (1 + np.exp(-KK * (np.log2(n) - X0))) + B)
g = zarr.open_group({path!r}, mode="r")
m = g.attrs["filtershift"]
recs = read_table(Location.of({path!r}), "records", m["version"])
w = g["weights"][:m["n_filters"]].astype(np.float64)
for a, b in zip(recs["start"], recs["stop"]):
    x = w[a:b]
    t = np.abs(x).max() * 0.01
    mask = np.all(np.abs(x) < (t if t else 1.0), axis=1)
    entropy(x), entropy(x[~mask])
"""

RESNET = """
shapes = [(64, 64)] * 3 + [(128, 128)] * 4 + [(256, 256)] * 6 + [(512, 512)] * 3
rng = np.random.default_rng(0)
rows = [dict(model_id=m, conv_depth=d, n=o * i, layer=f"l{{d}}", out_channels=o, in_channels=i, groups=1)
        for m in range({resnets}) for d, (o, i) in enumerate(shapes)]
recs = pd.DataFrame(rows)
w = rng.normal(size=(int(recs["n"].sum()), 9)).astype("f4")
ds = sd.from_arrays(w, recs, pd.DataFrame({{"model_id": range({resnets})}}))
print("n_filters", len(w))
"""

ORTHO_PASS = RESNET + """
t0 = time.perf_counter()
with dask.config.set(scheduler="threads"):
    orthogonality(ds)
print("ortho_s", time.perf_counter() - t0)
"""

ORTHO_LOOP = RESNET + """
t0 = time.perf_counter()
for a, b, o in zip(recs["n"].cumsum() - recs["n"], recs["n"].cumsum(), recs["out_channels"]):
    layer_orthogonality(w[a:b], o)
print("ortho_s", time.perf_counter() - t0)
"""


def _value(res: dict, key: str) -> float:
    return float(next(line.split()[1] for line in res["stdout"].splitlines() if line.startswith(key)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--filters", type=int, default=1_000_000)
    p.add_argument("--models", type=int, default=40)
    p.add_argument("--resnets", type=int, default=1, help="ResNet-50-shaped models for the orthogonality figures")
    p.add_argument("--workdir", help="folder for the synthetic store (default: a temporary folder)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    if not 0 < args.filters <= MAX_FILTERS:
        p.error(f"--filters must be in 1..{MAX_FILTERS:,}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_quality-"))
    work.mkdir(parents=True, exist_ok=True)
    path = str(work / "q.zarr")
    try:
        run_child(MAKE.format(path=path, n=args.filters, models=args.models))
        read = run_child(READ_DASK.format(path=path), setup=SETUP)
        quality = run_child(QUALITY.format(path=path), setup=SETUP)
        ref = run_child(REFERENCE.format(path=path), setup=SETUP)
        o_pass = run_child(ORTHO_PASS.format(resnets=args.resnets), setup=SETUP)
        o_loop = run_child(ORTHO_LOOP.format(resnets=args.resnets), setup=SETUP)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    n_res = int(_value(o_pass, "n_filters"))
    fin = _value(quality, "finalize_s")
    cold = quality["wall_s"] - fin
    lines = [
        f"Synthetic store, {args.filters:,} filters, {args.models} models (CNN-Filter-DB-like: no channels).",
        "",
        "| step | wall s | peak RSS |",
        "| --- | --- | --- |",
        f"| one read pass (dask, threads) | {read['wall_s']:.2f} | {gib(read['peak_rss'])} |",
        f"| layer_quality cold (passes 1 + 2, finalize) | {cold:.2f} | {gib(quality['peak_rss'])} |",
        f"| layer_quality on cached passes (finalize only) | {fin:.3f} | |",
        f"| in-memory reference (load all, numpy port per record) | {ref['wall_s']:.2f} | {gib(ref['peak_rss'])} |",
        "",
        f"Orthogonality, {args.resnets} ResNet-50-shaped random model(s) in memory ({n_res:,} filters):",
        "",
        "| step | wall s | peak RSS |",
        "| --- | --- | --- |",
        f"| orthogonality pass (engine, threads) | {_value(o_pass, 'ortho_s'):.2f} | {gib(o_pass['peak_rss'])} |",
        f"| numpy loop over layers | {_value(o_loop, 'ortho_s'):.2f} | {gib(o_loop['peak_rss'])} |",
    ]
    body = "\n".join(lines)
    if args.append:
        append_section(f"Quality at {args.filters:,} filters", body)
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
