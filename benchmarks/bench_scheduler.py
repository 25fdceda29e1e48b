"""``filtershift report`` on one local store with each scheduler the CLI offers, against one plain read pass
(issue #14: the default within 1.2x of the fastest of threads / processes / local, at 1e6 and at 1e8 filters).

Each round runs, in a rotated order, one plain zarr read pass (the baseline of every ratio) and the report with
the CLI's default scheduler and with ``--scheduler threads``, ``processes`` and ``local``, each as a subprocess of
the installed console script (``--force -q``). Wall time and the peak RSS of the process tree (sampled every
50 ms, workers included) are printed per round, with medians. The machine is shared: compare within a round.

    python benchmarks/bench_scheduler.py STORE [--rounds 2] [--append]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile

from _common import READ_ZARR, append_section, console_script, gib, run_child, run_tree

CHOICES = ("default", "threads", "processes", "local")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    exe = console_script()
    default = subprocess.run([exe, "cluster", "defaults"], capture_output=True, text=True).stdout.strip()
    results = {c: [] for c in ("read", *CHOICES)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as tmp:
        for r in range(args.rounds):
            order = ["read", *CHOICES[r % 4:], *CHOICES[:r % 4]]
            for choice in order:
                load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
                if choice == "read":
                    res = run_child(READ_ZARR.format(path=args.store))
                    wall, peak = res["wall_s"], res["peak_rss"]
                else:
                    sched = [] if choice == "default" else ["--scheduler", choice]
                    wall, peak = run_tree([exe, "report", args.store, "--out", f"{tmp}/rep-{choice}", "--force",
                                           "-q", *sched])
                results[choice].append(wall)
                rows.append(f"| {r + 1} | {choice} | {wall:.1f} | {gib(peak)} | {load} |")
                print(rows[-1], flush=True)
    read = statistics.median(results["read"])
    med = {c: statistics.median(results[c]) for c in CHOICES}
    fastest = min(med[c] for c in CHOICES[1:])
    lines = ["| round | run | wall s | peak RSS (tree) | load average |", "|---|---|---|---|---|", *rows, "",
             "| run | median wall s | / one read pass | / fastest explicit choice |", "|---|---|---|---|"]
    lines += [f"| {c} | {med[c]:.1f} | {med[c] / read:.1f} | {med[c] / fastest:.2f} |" for c in CHOICES]
    body = (f"Store `{args.store}`; one plain zarr read pass: median {read:.2f} s.\n\n" + "\n".join(lines)
            + f"\n\n`filtershift cluster defaults`:\n\n```\n{default}\n```")
    print(body)
    if args.append:
        append_section("The report's scheduler choices", body)


if __name__ == "__main__":
    main()
