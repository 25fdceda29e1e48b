"""Peak RSS and wall of label selections on a large store (issue #13): ``ds.sel(task=X)``,
``ds.sel(model_id=[...])``, ``isel`` and ``xr.concat`` of two selections, each in a fresh process, against the RSS
of ``open_store`` alone. Nothing of size N should be computed (the selections build graphs only), except the
integer positions of a non-contiguous ``sel``, which xarray's ``isel`` needs.

    filtershift synth /tmp/big.zarr --filters 100000000 --models 400 --format zarr     # ~3.6 GB, minutes
    python benchmarks/bench_sel.py /tmp/big.zarr [--append]
"""

from __future__ import annotations

import argparse
import json

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
                  "runs": len(fs.records(out))}}))
"""

CASES = {
    "open_store only": "out = ds",
    "ds.sel(task=tasks[0])": "out = ds.sel(task=tasks[0])",
    "ds.sel(model_id=list of 10 models)": "out = ds.sel(model_id=list(mids[::max(1, len(mids) // 10)][:10]))",
    "ds.isel(filter=slice(10**7, 5 * 10**7))": "out = ds.isel(filter=slice(10**7, 5 * 10**7))",
    "xr.concat([ds.sel(task=tasks[0]), ds.sel(task=tasks[1])])":
        "out = xr.concat([ds.sel(task=tasks[0]), ds.sel(task=tasks[1])], dim='filter')",
    "fs.select(ds, task=tasks[0])  (contiguous slices, concatenated)": "out = fs.select(ds, task=tasks[0])",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for name, op in CASES.items():
        code = "import json\n" + OPEN.format(path=args.store, op=op)
        res = run_child(code, setup=SETUP)
        info = json.loads(res["stdout"].strip().splitlines()[-1])
        rows.append((name, info, res["peak_rss"]))
        print(name, info, gib(res["peak_rss"]), flush=True)
    base = rows[0][2]
    lines = ["| operation | filters in result | runs | wall of the operation s | peak RSS | peak RSS / open_store's |",
             "|---|---|---|---|---|---|"]
    for name, info, peak in rows:
        lines.append(f"| `{name}` | {info['n']:,} | {info['runs']:,} | {info['op_s']:.3f} | {gib(peak)} | "
                     f"{peak / base:.2f} |")
    body = (f"Store: {rows[0][1]['n']:,} filters; open_store took {rows[0][1]['open_s']:.2f} s. Each row is a "
            "fresh process (imports not timed); the peak RSS is the whole process's, open_store included.\n\n"
            + "\n".join(lines))
    if args.append:
        append_section("Label selections on a large store (bench_sel.py)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
