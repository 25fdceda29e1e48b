"""Store benchmark: conversion time and peak RSS, size and read throughput per codec and chunk size.

    python benchmarks/bench_store.py --filters 10000000 [--workdir DIR] [--chunks 262144,1048576,4194304]

Every figure is measured in one run; the ratios compare with a plain sequential h5py read of the same source
taken in that run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import READ_DASK, READ_ZARR, append_section, gib, run_child

MAKE_SOURCE = """
import h5py, numpy as np, pandas as pd, warnings
warnings.simplefilter("ignore")
N, path = {n}, {path!r}
rng = np.random.default_rng(0)
sizes = []
left = N
while left > 0:
    s = int(min(left, rng.integers(2_000, 400_000)))
    sizes.append(s); left -= s
with h5py.File(path, "w") as h:
    d = h.create_dataset("filters", shape=(N, 9), dtype="f4")
    step = 1 << 22
    for a in range(0, N, step):
        b = min(N, a + step)
        d[a:b] = (rng.standard_normal((b - a, 9), dtype=np.float32) * 0.05)
starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
meta = pd.DataFrame({{
    "model_id": np.arange(len(sizes)) // 20, "conv_depth": np.arange(len(sizes)) % 20,
    "conv_depth_norm": (np.arange(len(sizes)) % 20) / 19.0,
    "filter_ids": [f"{{a}}:{{a + s - 1}}" for a, s in zip(starts, sizes)],
    "Task": "Classification", "Visual Category": "natural",
}}).set_index(["model_id", "conv_depth", "conv_depth_norm"])
meta.to_hdf(path, key="meta", format="table")
"""

RAW_READ = """
import h5py, numpy as np
with h5py.File({path!r}) as h:
    d = h["filters"]; step = 1 << 20; s = 0.0
    for a in range(0, d.shape[0], step):
        s += float(d[a:a + step].sum(dtype=np.float64))
"""

CONVERT = """
from filtershift.store.convert import convert
convert({src!r}, {dst!r}, chunk_filters={chunk}, codec={codec!r}, overwrite=True)
"""


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--filters", type=int, default=10_000_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--codecs", default="none,lz4,zstd")
    ap.add_argument("--chunks", default="65536,1048576,4194304",
                    help="extra chunk sizes tried with codec none (the default 262144 is always run)")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "source.h5"
    n = args.filters
    t = time.perf_counter()
    run_child(MAKE_SOURCE.format(n=n, path=str(src)))
    print(f"source: {n:,} filters in {time.perf_counter() - t:.1f} s")
    raw = run_child(RAW_READ.format(path=str(src)))
    raw_gbs = n * 36 / raw["wall_s"] / 1e9
    rows = [f"Source: {n:,} filters ({gib(n * 36)} as float32). Plain h5py sequential read: "
            f"{raw['wall_s']:.2f} s ({raw_gbs:.2f} GB/s).", "",
            "| codec | chunk (filters) | convert s | convert / raw read | convert peak RSS | size / raw | "
            "zarr read s | read / raw read | dask read s |",
            "|---|---|---|---|---|---|---|---|---|"]
    chunks = [int(c) for c in args.chunks.split(",")]
    default = 1 << 18
    configs = [(c, default) for c in args.codecs.split(",")] + [("none", c) for c in chunks if c != default]
    for codec, chunk in configs:
        dst = work / f"db-{codec}-{chunk}.zarr"
        conv = run_child(CONVERT.format(src=str(src), dst=str(dst), chunk=chunk, codec=codec))
        read = run_child(READ_ZARR.format(path=str(dst)))
        dread = run_child(READ_DASK.format(path=str(dst)))
        size = du(dst)
        rows.append(f"| {codec} | {chunk:,} | {conv['wall_s']:.2f} | {conv['wall_s'] / raw['wall_s']:.2f} | "
                    f"{gib(conv['peak_rss'])} | {size / (n * 36):.3f} | {read['wall_s']:.2f} | "
                    f"{read['wall_s'] / raw['wall_s']:.2f} | {dread['wall_s']:.2f} |")
        print(rows[-1], flush=True)
        shutil.rmtree(dst)
    rows += ["", "Convert includes the source SHA-256, the write, and the validation read-back. Random normal "
             "weights are incompressible like trained float32 weights (about 1.05-1.2x losslessly)."]
    append_section(f"Store: convert and read, {n:,} filters", "\n".join(rows))
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
