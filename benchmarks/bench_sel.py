"""Peak RSS and wall of label selections on a large store (issue #13): ``ds.sel(task=X)``,
``ds.sel(model_id=[...])``, ``isel`` and ``xr.concat`` of two selections, each in a fresh process, against the RSS
of ``open_store`` alone, and the O(runs) forms ``ds.filtershift.sel``/``fs.select`` (slices of blocks). Nothing
of size N should be computed (the selections build graphs only), except the integer positions of a non-contiguous
``ds.sel``, which xarray's ``isel`` needs. ``--before DIR`` runs every case also with ``PYTHONPATH=DIR`` (an older
checkout, e.g. ``git archive main | tar -x -C DIR``) in the same run, for a before/after table.

    filtershift synth /tmp/big.zarr --filters 100000000 --models 400 --format zarr     # ~3.6 GB, minutes
    python benchmarks/bench_sel.py /tmp/big.zarr [--before DIR] [--append]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from _common import append_section, gib, run_child

SETUP = "import numpy as np, xarray as xr, filtershift as fs; fs.open_store"

#: Each case opens the store (timed apart), then runs the selection; ``n`` is the size of the result.
OPEN = """
import resource, time
t0 = time.perf_counter()
ds = fs.open_store({path!r})
t_open = time.perf_counter() - t0
rss_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tasks = ds["task"].attrs["labels"]
mids = fs.models(ds)["model_id"].to_numpy()
t0 = time.perf_counter()
{op}
t_op = time.perf_counter() - t0
print(json.dumps({{"open_s": t_open, "op_s": t_op, "rss_open": rss_open, "n": int(out.sizes["filter"]),
                  "runs": len(fs.records(out)), "keys": len(out["weights"].data.__dask_graph__())}}))
"""

CASES = {
    "open_store only": "out = ds",
    "ds.sel(task=tasks[0])": "out = ds.sel(task=tasks[0])",
    "ds.sel(model_id=list of 10 models)": "out = ds.sel(model_id=list(mids[::max(1, len(mids) // 10)][:10]))",
    "ds.isel(filter=slice(10**7, 5 * 10**7))": "out = ds.isel(filter=slice(10**7, 5 * 10**7))",
    "xr.concat([ds.sel(task=tasks[0]), ds.sel(task=tasks[1])])":
        "out = xr.concat([ds.sel(task=tasks[0]), ds.sel(task=tasks[1])], dim='filter')",
    "fs.select(ds, task=tasks[0])": "out = fs.select(ds, task=tasks[0])",
    "ds.filtershift.sel(task=tasks[0])": "out = ds.filtershift.sel(task=tasks[0])",
    "ds.filtershift.sel(model_id=list of 10 models)":
        "out = ds.filtershift.sel(model_id=list(mids[::max(1, len(mids) // 10)][:10]))",
    "xr.concat([ds.filtershift.sel(task=tasks[0]), ds.filtershift.sel(task=tasks[1])])":
        "out = xr.concat([ds.filtershift.sel(task=tasks[0]), ds.filtershift.sel(task=tasks[1])], dim='filter')",
}


def _run(path: str, op: str, env: dict | None) -> tuple[dict | None, int | None]:
    """(result, peak RSS) of one case in a fresh process, or (None, None) when that code lacks the operation."""
    code = "import json\n" + OPEN.format(path=path, op=op)
    try:
        res = run_child(code, env=env, setup=SETUP)
    except RuntimeError as exc:
        if "AttributeError" in str(exc):
            return None, None
        raise
    return json.loads(res["stdout"].strip().splitlines()[-1]), res["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--before", help="an older checkout to run every case with as well (PYTHONPATH)")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    store = args.store if "://" in args.store else str(Path(args.store).resolve())
    here = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.before:
        # children run `python -c`, which puts the working directory first on sys.path: leave any checkout
        os.chdir(tempfile.gettempdir())
    rows = []
    for name, op in CASES.items():
        before = _run(store, op, {"PYTHONPATH": str(Path(args.before).resolve())}) if args.before else (None, None)
        after = _run(store, op, here)
        rows.append((name, before, after))
        print(name, before, after, flush=True)
    base = rows[0][2][1]

    def cells(info, peak):
        if info is None:
            return "n/a | n/a"
        return f"{info['op_s']:.2f} | {gib(peak)} ({peak / base:.1f}x)"

    head = "| operation | filters in result | runs | graph keys of weights |"
    rule = "|---|---|---|---|"
    if args.before:
        head += " before: wall s | before: peak RSS |"
        rule += "---|---|"
    lines = [head + " wall s | peak RSS (/ open_store's) |", rule + "---|---|"]
    for name, (binfo, bpeak), (info, peak) in rows:
        line = f"| `{name}` | {info['n']:,} | {info['runs']:,} | {info['keys']:,} |"
        if args.before:
            line += f" {cells(binfo, bpeak)} |"
        lines.append(line + f" {cells(info, peak)} |")
    body = (f"Store: {rows[0][2][0]['n']:,} filters; open_store took {rows[0][2][0]['open_s']:.2f} s. Each cell is a "
            "fresh process (imports not timed); the peak RSS is the whole process's, open_store included"
            + (f"; before: the code at {args.before}" if args.before else "") + ".\n\n" + "\n".join(lines))
    if args.append:
        append_section("Label selections on a large store (bench_sel.py)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
