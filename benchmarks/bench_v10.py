"""v1.0 scale on one machine (issue #14): ``filtershift report`` on a store of CNN-Filter-DB v1.0's size
(1,464,797,156 filters, 647 models; a 52.7 GB store, more than twice this machine's RAM) against one cold
sequential read of the same store.

Steps: write the store with ``filtershift synth --format zarr`` (skipped when STORE already holds the filters);
evict the store's files from the page cache (``posix_fadvise(DONTNEED)`` per file after ``sync``) and read every
weights chunk file once, in order (the cold read); evict again and run ``filtershift report STORE --out OUT -q``
with the default scheduler, sampling the peak RSS of its process tree (figure and cluster workers included);
evict again and time one plain read pass through zarr (the store's reader, decoded). Stage times come from the
report's run.log.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--filters", type=int, default=V10_FILTERS)
    parser.add_argument("--models", type=int, default=647)
    parser.add_argument("--out", type=Path, help="report output (default: STORE.report)")
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

    body = (f"{args.filters:,} filters, {args.models} models; the store holds {size / 1e9:.1f} GB in {len(files):,} "
            f"files ({len(weights):,} weights chunks); the report computed on {scheduler}. Every run starts with "
            f"the store's files evicted from the page cache.\n\n"
            "| run | wall | peak RSS (process tree) | / cold read |\n|---|---|---|---|\n" + "\n".join(lines)
            + "\n\nReport stages (from run.log):\n\n| stage | s |\n|---|---|\n"
            + "\n".join(f"| {k} | {v:.1f} |" for k, v in stage_s.items()))
    print(body)
    if args.append:
        append_section(f"v1.0 scale: the report against one cold read, {args.filters:,} filters", body)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
