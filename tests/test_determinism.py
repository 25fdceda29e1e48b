"""The kernels give the same bits in every process, whatever numba compiled first and whatever its cache holds.

numba keeps compiled kernels on disk. A worker process loads what another process compiled, and that process may
have compiled other specialisations first (read-only chunk arrays, the pass-2 and pass-3 kernels). Before the
reassociating co-moment loop was inlined into the kernels that use it, a pass-1 kernel loaded from such a cache
summed in another order than a fresh compile (co-moments differed by 1.5e-11), which is how a process cluster's
results came to differ from the threaded scheduler's in the last bits.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import sys, numpy as np
from filtershift.stats import histograms as hi, moments as mo
history, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
w = (rng.standard_normal((60000, 9)) * rng.lognormal(0, 1, (60000, 1)) + 0.3).astype(np.float32)
w[::97] *= np.float32(1e-4)                                  # sparse filters: pass 2's full path runs too
rec = np.repeat(np.arange(12), 5000)
comps = np.linalg.qr(rng.standard_normal((9, 9)))[0]
second = {"record": np.arange(12), "raw_absmax": np.abs(w).reshape(12, -1).max(1).astype(np.float64),
          "raw_mean": np.zeros((12, 9)) + 0.3, "eps": 0.01, "mean": np.zeros(9) + 0.1, "components": comps,
          "clean": np.arange(12) % 2 == 0}                   # half the records skip the sparsity kernel
hist = {"mean": second["mean"], "components": comps, "edges": np.linspace(-3, 3, 71), "fine_edges": np.zeros(0)}
if history == "others-first":
    ro = w.copy()
    ro.flags.writeable = False
    hi.hist_chunk(ro, rec, hist)
    mo.range_sparsity_chunk(ro, rec, second)
    mo.moments_chunk(ro, rec)
    strided = np.repeat(w, 2, axis=1)[:, ::2]                # non-contiguous: numba's 'A' layout
    res = [np.zeros(12, np.int64), np.zeros((12, 9)), np.zeros((12, 9, 9)), np.zeros((12, 9)),
           np.zeros((12, 9, 9))] + [np.zeros(12) for _ in range(4)]
    mo.moments_kernel(strided, np.arange(0, 60001, 5000), *res)
parts = {"p1": mo.moments_chunk(w, rec), "p2": mo.range_sparsity_chunk(w, rec, second),
         "p3": hi.hist_chunk(w, rec, hist)}
np.savez(out, **{f"{p}.{k}": v for p, part in parts.items() for k, v in part.items()})
"""


def _run(history: str, cache, out) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-c", SCRIPT, history, str(out)], env=env, check=True, timeout=600)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.extended
def test_kernels_give_the_same_bits_whatever_the_compile_history(tmp_path):
    cache = tmp_path / "numba-cache"
    first = _run("others-first", cache, tmp_path / "a.npz")   # fresh compile, other kernels and layouts first
    loaded = _run("direct", cache, tmp_path / "b.npz")        # these kernels only, loaded from that cache
    assert first.keys() == loaded.keys()
    assert {"p1.scaled_comoment", "p2.nonsparse_comoment", "p3.counts"} <= first.keys()
    differ = [k for k in first if not np.array_equal(first[k], loaded[k])]
    assert not differ, f"kernel outputs depend on the compile history: {differ}"
