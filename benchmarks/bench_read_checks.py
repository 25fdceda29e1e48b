"""Cost of the readers' per-chunk sum check (float64 sum vs the manifest's integrity.chunk_sums).

    python benchmarks/bench_read_checks.py [--filters 10000000] [--repeat 3] [--workdir DIR]

(1) One default 9 MiB chunk file (262,144 filters + crc32c): median time of the direct reader's existing work
(map the file, CRC-32C of data + checksum) against the sum check (numba, float64 sum and sum of |w| in one
pass), and numpy's ``block.sum(dtype=float64)`` for comparison; the three alternate, so a slow minute slows all.
(2) The full 3-pass shift analysis of ``bench_shift.py`` on a synthetic store, in fresh processes, with the sum
check and with it replaced by a no-op, in alternating rounds; the number of checks made is counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import run_child
from bench_shift import FULL, MAKE, SETUP

COUNT = """
import filtershift.store.chunks as _chunks
_calls = [0]
_check = _chunks.ChunkReader._check_sum
def _counted(self, i, part):
    _calls[0] += 1
    {body}
_chunks.ChunkReader._check_sum = _counted
"""


def micro(work: Path, rounds: int) -> dict:
    import google_crc32c

    from filtershift.store.chunks import _read_file, chunk_sum

    rows = 1 << 18
    block = (np.random.default_rng(0).normal(size=(rows, 9)) * 0.1).astype("<f4")
    data = block.tobytes()
    path = work / "chunk"
    path.write_bytes(data + google_crc32c.value(data).to_bytes(4, "little"))
    view = np.frombuffer(_read_file(str(path)), "<f4", count=rows * 9).reshape(rows, 9)
    chunk_sum(view)
    steps = {
        "map + CRC-32C (existing)": lambda: google_crc32c.value(_read_file(str(path))),
        "sum check (numba)": lambda: chunk_sum(view),
        "numpy sum(dtype=float64)": lambda: view.sum(dtype=np.float64),
    }
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, default=10_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fs-bench-checks-"))
    work.mkdir(parents=True, exist_ok=True)
    per = micro(work, 300)
    for name, s in per.items():
        print(f"{name:>26}: {s * 1e3:.3f} ms per 9 MiB chunk")
    path = str(work / "db.zarr")
    if not Path(path).exists():
        run_child(MAKE.format(path=path, n=args.filters, models=args.models))
    variants = {"with sum check": COUNT.format(body="return _check(self, i, part)"),
                "sum check off": COUNT.format(body="return None")}
    walls = {name: [] for name in variants}
    calls = {}
    for k in range(args.repeat):
        for name, patch in variants.items():
            code = FULL.format(path=path) + "\nprint('CHECKS', _calls[0])\n"
            r = run_child(code, setup=SETUP + patch)
            walls[name].append(r["wall_s"])
            calls[name] = int(r["stdout"].split("CHECKS")[-1])
            print(f"{name:>16} (round {k + 1}/{args.repeat}): {r['wall_s']:.3f} s, {calls[name]} chunk checks",
                  flush=True)
    on, off = (statistics.median(walls[n]) for n in variants)
    checks = calls["with sum check"]
    print(f"full analysis, {args.filters:,} filters: median {on:.3f} s with the check, {off:.3f} s without "
          f"({(on / off - 1) * 100:+.1f}%); {checks} chunk checks x {per['sum check (numba)'] * 1e3:.3f} ms = "
          f"{checks * per['sum check (numba)']:.3f} s of CPU = {checks * per['sum check (numba)'] / off * 100:.1f}% "
          f"of the analysis' wall time")


if __name__ == "__main__":
    main()
