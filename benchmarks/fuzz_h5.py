"""Mutation fuzzing of the dataset.h5 reader: every mutated file must give a store or a clear InputError,
never an interpreter crash, a hang or unbounded memory.

    python benchmarks/fuzz_h5.py --files 2000 [--seed 0] [--meta-format table|fixed]

Runs the loop in a child process with a 4 GiB address-space limit and a time limit per file; prints the
outcome counts and appends them to BENCHMARKS.md. The test suite runs a short version (tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 20))):
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    if rng.random() < 0.1:
        b = b[: int(rng.integers(0, len(b)))]
    return bytes(b)


def fuzz(n_files: int, seed: int, meta_format: str, workdir: str, per_file_s: int = 60) -> dict:
    """Outcome counts; raises AssertionError on anything but a store or an InputError."""
    import resource

    from sources import make_meta, random_weights, write_source

    from filtershift.errors import InputError
    from filtershift.store.convert import convert

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    warnings.simplefilter("ignore")
    sizes = [30, 50, 20, 40]
    base = Path(workdir) / "base.h5"
    write_source(base, random_weights(sum(sizes)), make_meta(sizes), meta_format=meta_format)
    data = base.read_bytes()
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()

    def alarm(*_):
        raise TimeoutError("hang")

    signal.signal(signal.SIGALRM, alarm)
    for _ in range(n_files):
        path = Path(workdir) / "m.h5"
        path.write_bytes(mutate(data, rng))
        signal.alarm(per_file_s)
        try:
            convert(path, Path(workdir) / "m.zarr", chunk_filters=64, overwrite=True)
            outcomes["store"] += 1
        except InputError as exc:
            outcomes["InputError: " + str(exc).split(": ", 1)[1][:48]] += 1
        finally:
            signal.alarm(0)
    return dict(outcomes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--meta-format", default="table", choices=("table", "fixed"))
    args = ap.parse_args()
    from _common import append_section

    work = tempfile.mkdtemp(prefix="fs-fuzz-")
    try:
        outcomes = fuzz(args.files, args.seed, args.meta_format, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{args.files} mutated {args.meta_format}-format sources: every one gave a store or an InputError "
             "(no crash, hang over 60 s, or allocation over 4 GiB).", "", "| outcome | files |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])]
    append_section("Fuzzing the dataset.h5 reader", "\n".join(lines))
    print(json.dumps(outcomes, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")
    main()
