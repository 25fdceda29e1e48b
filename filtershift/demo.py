"""The main job on built-in data: synthesize a CNN-Filter-DB-like data set, convert it, analyse it, report.

Everything lands in one directory (default ``./filtershift-demo/``): ``dataset.h5`` (the synthetic source and
its ``.truth.json``), ``db.zarr`` (the store) and ``report/`` (the HTML report, results.json, figures, tables).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(out="filtershift-demo", *, n_filters: int = 1_000_000, n_models: int = 48, seed: int = 0,
             scheduler: str | None = None) -> dict:
    """Run the demo into ``out``: synthesize a source, convert it to a store, build its report.

    Parameters
    ----------
    out : str or os.PathLike, default "filtershift-demo"
        Local output directory (created if missing); the demo overwrites its ``dataset.h5`` and ``db.zarr``.
    n_filters : int, default 1_000_000
        Number of synthetic filters.
    n_models : int, default 48
        Number of synthetic models.
    seed : int, default 0
        Seed of the synthetic data.
    scheduler : str, optional
        Dask scheduler of the report (see :func:`~filtershift.scheduler_context`).

    Returns
    -------
    dict
        Summary (also written to ``out/demo-summary.json``): ``out``, ``source``, ``store``, ``info`` (the store's
        :func:`~filtershift.store.verify.info`), ``truth`` (the synthetic ground truth), ``timings`` (seconds per
        step; ``compile_wait_s``: the wait for the kernels compiled in the background while synthesizing and
        converting) and ``report`` (path of the report page).
    """
    from filtershift.outputs import local_path
    from filtershift.stats.kernels import precompile
    from filtershift.store.convert import convert
    from filtershift.store.verify import info
    from filtershift.synth import read_truth, synthesize

    out = local_path(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    t = time.perf_counter()
    compiling = precompile(_demo_kernels(), child=_CHILD_KERNELS)
    src = synthesize(out / "dataset.h5", n_filters=n_filters, n_models=n_models, seed=seed, overwrite=True)
    timings["synthesize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    store = out / "db.zarr"
    convert(src, store, overwrite=True, provenance_kind="synth")
    timings["convert_s"] = time.perf_counter() - t
    summary = {"out": str(out), "source": str(src), "store": str(store), "info": info(store),
               "truth": read_truth(src), "timings": timings}
    t = time.perf_counter()
    compiling.join()
    timings["compile_wait_s"] = time.perf_counter() - t
    summary.update(_analyse(store, out, scheduler, timings))
    (out / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


#: Analysis kernels a child process compiles while the demo's own thread compiles the others (about half of the
#: compile time each, measured in BENCHMARKS.md).
_CHILD_KERNELS = ("range_kernel", "sparsity_kernel", "hist_kernel")


def _demo_kernels() -> list:
    """The synthesizer's kernel, then the analysis kernels that no child compiles: the order the demo first calls
    them, so that synthesizing starts as soon as its own kernel is compiled and the rest compile while it runs."""
    from filtershift import synth
    from filtershift.stats.kernels import analysis_kernels

    return [*synth.kernels(), *[(k, s) for k, s in analysis_kernels() if k.__name__ not in _CHILD_KERNELS]]


def _analyse(store: Path, out: Path, scheduler: str | None, timings: dict) -> dict:
    from filtershift.report import build_report

    t = time.perf_counter()
    result = build_report(store, out / "report", scheduler=scheduler)
    timings["report_s"] = time.perf_counter() - t
    return {"report": str(result.index_html) if hasattr(result, "index_html") else str(out / "report")}
