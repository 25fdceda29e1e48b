"""Wall time of ``filtershift --help`` and of every ``filtershift CMD --help`` (issue #14: under 0.3 s each).

Runs the installed console script N times per command, interleaving the commands in each round, and prints the
median and the slowest run of each, next to a bare ``python -c pass`` measured the same way (the floor of any
Python command line on this machine at this moment). ``--append`` adds the table to BENCHMARKS.md.

    python benchmarks/bench_help.py --repeat 10 [--append]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from _common import append_section, console_script

COMMANDS = [[], ["cluster", "defaults"], ["cluster", "check"], ["cluster", "local"], ["compare"], ["convert"],
            ["demo"], ["drift"], ["extract"], ["info"], ["pca"], ["quality"], ["report"], ["synth"], ["verify"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=10, help="runs per command (default %(default)s)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    exe = console_script()
    runs = {("python -c pass",): [], **{("filtershift", *c, "--help"): [] for c in COMMANDS}}
    for _ in range(args.repeat):
        for key in runs:
            argv = [sys.executable, "-c", "pass"] if key == ("python -c pass",) else [exe, *key[1:]]
            t0 = time.perf_counter()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            runs[key].append(time.perf_counter() - t0)
            if done.returncode != 0:
                sys.exit(f"{' '.join(key)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    lines = ["| command | median s | slowest s |", "|---|---|---|"]
    for key, times in runs.items():
        lines.append(f"| `{' '.join(key)}` | {statistics.median(times):.3f} | {max(times):.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.append:
        append_section(f"`--help` wall times, {args.repeat} interleaved runs per command", table)


if __name__ == "__main__":
    main()
