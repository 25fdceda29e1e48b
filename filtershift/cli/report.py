"""``filtershift report STORE --out DIR``: the scheduled aggregate report (see docs/report.md).

Exit codes: 0 built, reused or skipped; 2 bad input or config; 3 store incomplete; 4 another report is being built
into DIR; 1 unexpected failure (the traceback is in the failed run's run.log).
"""

import argparse
import json
import logging
import sys

from filtershift.cli._args import add_storage_options, storage_options


def register(sub) -> None:
    p = sub.add_parser("report", help="build the HTML report, results.json, tables and figures of a store",
                       description="Analyse a store (basis, drift per grouping and metric, intervals, quality) and "
                                   "publish the report as a new run under DIR/runs/, switching DIR/latest "
                                   "atomically. A run for the same store snapshot and spec is reused, not rebuilt.")
    p.add_argument("store", nargs="?", default=None, help="store path or URL (default: 'store' of --config)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report directory or URL (s3://bucket/reports, gs://..., memory://...; see docs/report.md, "
                        "'On object storage'); default: 'output' of --config")
    p.add_argument("--config", default=None, metavar="REPORT.YAML",
                   help="report spec: groupings, metrics, bins, thresholds, figures (see examples/report.yaml)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="tcp://HOST:PORT, a scheduler file, threads, processes, synchronous or local "
                        "(default: 'scheduler' of --config, DASK_SCHEDULER_ADDRESS, dask config, else threads; see "
                        "`filtershift cluster defaults`)")
    p.add_argument("--keep-missing", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the models whose label is missing as a group of their own ('unknown') in every "
                        "grouping; by default they are left out and the page says how many (default: "
                        "'keep_missing' of --config, else false)")
    p.add_argument("--where", default=None, metavar="EXPR",
                   help="report on the records that satisfy EXPR only (docs/analysis.md), e.g. 'task == "
                        "\"Classification\"' (default: 'where' of --config, else every record)")
    p.add_argument("--force", action="store_true", help="build a new run even if one covers this store and spec")
    p.add_argument("--json", action="store_true", help="print status, run, paths and spec hash as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.report import build_report

    logger = logging.getLogger("filtershift")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = build_report(args.store, args.out, args.config, args.scheduler, force=args.force,
                              default_scheduler="threads", storage_options=storage_options(args),
                              keep_missing=args.keep_missing, where=args.where)
    finally:
        logger.removeHandler(handler)
    summary = {"status": result.status, "run": result.run, "run_dir": str(result.run_dir),
               "report": str(result.index_html), "history": str(result.history_html),
               "spec_hash": result.spec_hash, "store_version": result.identity["store_version"]}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{result.status}: {result.index_html}")
    return result.exit_code
