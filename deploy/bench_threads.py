"""Measure block-kernel throughput of LocalCluster shapes (workers x threads) to choose threads_per_worker.

Each task generates one block of 262,144 filters x 9 (as a chunk read would), then runs the moments pass
(numba, nogil) and the histogram pass of filtershift.stats on it. Usage: python deploy/bench_threads.py [BLOCKS]
"""

import sys
import time

import numpy as np
from distributed import Client, LocalCluster

C = 262_144
RECORDS_PER_BLOCK = 40


def block_task(seed: int) -> float:
    """Moments and histograms of one synthetic block; returns a checksum so the result is used."""
    from filtershift.stats import histograms, moments

    rng = np.random.default_rng(abs(seed))
    w = rng.standard_normal((C, 9), dtype=np.float32)
    record = np.repeat(np.arange(RECORDS_PER_BLOCK, dtype=np.int32) + abs(seed) * RECORDS_PER_BLOCK,
                       C // RECORDS_PER_BLOCK + 1)[:C]
    m = moments.moments_chunk(w, record)
    comps = np.linalg.eigh(np.cov(w[:4096].T.astype(np.float64)))[1].T[::-1].copy()
    params = {"mean": np.zeros(9), "components": comps, "edges": np.linspace(-5, 5, 71),
              "fine_edges": np.zeros(0)}
    h = histograms.hist_chunk(w, record, params)
    return float(m["raw_sum"].sum() + h["counts"].sum())


def run(n_workers: int, threads: int, blocks: int) -> float:
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.gather(client.map(block_task, range(-n_workers * threads, 0), pure=False))
        t = time.perf_counter()
        client.gather(client.map(block_task, range(blocks), pure=False))
        return blocks * C / (time.perf_counter() - t)


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    from dask.system import cpu_count

    CPU_COUNT = cpu_count()

    shapes = [(CPU_COUNT, 1), (max(1, CPU_COUNT // 2), 2), (CPU_COUNT, 2)]
    for rep in range(2):
        for n, t in shapes:
            print(f"rep {rep}  {n} workers x {t} threads: {run(n, t, blocks) / 1e6:7.1f} M filters/s", flush=True)


if __name__ == "__main__":
    main()
