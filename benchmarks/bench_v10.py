"""v1.0 scale on one machine (issue #14): ``filtershift report`` on a store of CNN-Filter-DB v1.0's size
(1,464,797,156 filters, 647 models; a 52.7 GB store, more than twice this machine's RAM) against one cold
sequential read of the same store.

Steps: write the store with ``filtershift synth --format zarr`` (skipped when STORE already holds the filters);
evict the store's files from the page cache (``posix_fadvise(DONTNEED)`` per file after ``sync``) and read every
weights chunk file once, in order (the cold read); evict again and run ``filtershift report STORE --out OUT -q``
with the default scheduler, sampling the peak RSS of its process tree (figure and cluster workers included);
evict again and time one plain read pass through zarr (the store's reader, decoded). Stage times come from the
report's run.log. Then pass 1 over the first ``--read-ahead`` chunks, cold and warm, with the chunk reader's
read-ahead hints and without them (interleaved rounds).

    python benchmarks/bench_v10.py --store /data/v10.zarr [--filters 1464797156] [--append]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import READ_ZARR, append_section, console_script, gib, run_child, run_tree
from bench_demo import stages

V10_FILTERS = 1_464_797_156
BLOCK = 1 << 24


def store_files(store: Path) -> list[Path]:
    """Every file of the store, the weights chunks in their order first."""
    weights = sorted((p for p in (store / "weights").rglob("*") if p.is_file() and p.name != "zarr.json"),
                     key=lambda p: [int(x) if x.isdigit() else x for x in p.relative_to(store / "weights").parts])
    rest = [p for p in store.rglob("*") if p.is_file() and p not in set(weights)]
    return weights + rest


def evict(files: list[Path]) -> None:
    """Drop ``files`` from the page cache (dirty pages are written first, so they can go)."""
    os.sync()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_read(files: list[Path]) -> tuple[float, int]:
    """Seconds and bytes of one sequential read of ``files`` (after :func:`evict`)."""
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return time.perf_counter() - t0, total


READ_AHEAD = """
import os, time, dask, filtershift as fs
from filtershift.store import chunks
files, n = {files!r}, {n}
def evict():
    os.sync()
    for p in files:
        fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
hint = chunks.ChunkReader._prefetch
ds = fs.open_store({store!r})
sub = ds.isel(filter=slice(0, n * ds["weights"].data.chunks[0][0]))
with dask.config.set(scheduler="threads"):
    fs.fit_basis(sub)                   # not timed: loads the kernels
times = {{}}
for mode in ["hints", "none", "hints-warm", "none-warm"] * {rounds}:
    chunks.ChunkReader._prefetch = hint if mode.startswith("hints") else (lambda self, i: None)
    if not mode.endswith("warm"):
        evict()
    t = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        fs.fit_basis(sub)
    times.setdefault(mode, []).append(time.perf_counter() - t)
print("TIMES", times)
"""


def read_ahead(store: Path, weights: list[Path], n: int, rounds: int) -> str:
    """Pass 1 over the first ``n`` chunks, cold and warm, with the reader's read-ahead hints and without
    (interleaved), against a cold plain read of the same files: a table."""
    import ast
    import statistics

    files = [str(p) for p in weights[:n]]
    raw = []
    for _ in range(rounds):
        evict([Path(p) for p in files])
        raw.append(cold_read([Path(p) for p in files])[0])
    out = run_child(READ_AHEAD.format(files=files, n=n, store=str(store), rounds=rounds))
    times = ast.literal_eval(next(line for line in out["stdout"].splitlines() if line.startswith("TIMES"))[6:])
    med = {k: statistics.median(v) for k, v in times.items()}
    label = {"none": "cold, read-ahead hints off", "hints": "cold, read-ahead hints on",
             "none-warm": "warm, read-ahead hints off", "hints-warm": "warm, read-ahead hints on"}
    rows = [("cold plain read of the chunk files", statistics.median(raw))] + [
        (f"pass 1 ({label[k]})", med[k]) for k in label]
    size = sum(os.path.getsize(p) for p in files) / 1e9
    return (f"Pass 1 (`fit_basis`, threads) over the first {n} chunks ({size:.2f} "
            f"GB), medians of {rounds} interleaved rounds:\n\n| run | s | / cold read |\n|---|---|---|\n"
            + "\n".join(f"| {name} | {t:.2f} | {t / rows[0][1]:.2f} |" for name, t in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--filters", type=int, default=V10_FILTERS)
    parser.add_argument("--models", type=int, default=647)
    parser.add_argument("--out", type=Path, help="report output (default: STORE.report)")
    parser.add_argument("--read-ahead", type=int, default=400, metavar="CHUNKS",
                        help="also time pass 1 over this many chunks with and without read-ahead hints (0: skip)")
    parser.add_argument("--append", action="store_true", help="append a section to BENCHMARKS.md")
    args = parser.parse_args()
    exe = console_script()
    store = args.store.resolve()
    out = (args.out or store.with_name(store.name + ".report")).resolve()
    lines = []

    have = None
    if (store / "zarr.json").exists():
        done = subprocess.run([exe, "info", str(store), "--json"], capture_output=True, text=True)
        have = json.loads(done.stdout)["n_filters"] if done.returncode == 0 else None
    if have != args.filters:
        store.parent.mkdir(parents=True, exist_ok=True)
        argv = [exe, "synth", "--format", "zarr", "--filters", str(args.filters), "--models", str(args.models),
                str(store), *(["--resume"] if store.exists() else [])]
        wall, peak = run_tree(argv)
        lines.append(f"| `filtershift synth --format zarr` | {wall:.0f} s | {gib(peak)} | |")
        print(f"synth: {wall:.0f} s, peak RSS {gib(peak)}", flush=True)
    files = store_files(store)
    size = sum(p.stat().st_size for p in files)
    weights = [p for p in files if p.is_relative_to(store / "weights")]

    evict(files)
    read_s, read_bytes = cold_read(weights)
    print(f"cold read of the weights chunks: {read_s:.1f} s, {read_bytes / read_s / 1e6:.0f} MB/s", flush=True)
    lines.append(f"| one cold sequential read of the weights chunk files | {read_s:.0f} s | - | 1.00 |")

    evict(files)
    wall, peak = run_tree([exe, "report", str(store), "--out", str(out), "--force", "-q"])
    print(f"report: {wall:.0f} s, peak RSS {gib(peak)}, {wall / read_s:.2f}x the cold read", flush=True)
    lines.append(f"| `filtershift report STORE --out OUT -q` (default scheduler) | {wall:.0f} s | {gib(peak)} | "
                 f"{wall / read_s:.2f} |")
    stage_s = stages(out / "latest" / "run.log")
    scheduler = json.loads((out / "latest" / "results.json").read_text())["run"].get("scheduler", "?")

    evict(files)
    zarr_pass = run_child(READ_ZARR.format(path=str(store)))
    print(f"cold zarr read pass: {zarr_pass['wall_s']:.0f} s", flush=True)
    lines.append(f"| one cold zarr read pass (decode and sum, chunk by chunk) | {zarr_pass['wall_s']:.0f} s | "
                 f"{gib(zarr_pass['peak_rss'])} | {zarr_pass['wall_s'] / read_s:.2f} |")

    ahead = read_ahead(store, weights, args.read_ahead, 2) if args.read_ahead else ""
    print(ahead, flush=True)

    body = (f"{args.filters:,} filters, {args.models} models; the store holds {size / 1e9:.1f} GB in {len(files):,} "
            f"files ({len(weights):,} weights chunks); the report computed on {scheduler}. Every run starts with "
            f"the store's files evicted from the page cache.\n\n"
            "| run | wall | peak RSS (process tree) | / cold read |\n|---|---|---|---|\n" + "\n".join(lines)
            + "\n\nReport stages (from run.log):\n\n| stage | s |\n|---|---|\n"
            + "\n".join(f"| {k} | {v:.1f} |" for k, v in stage_s.items()) + ("\n\n" + ahead if ahead else ""))
    print(body)
    if args.append:
        append_section(f"v1.0 scale: the report against one cold read, {args.filters:,} filters", body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
