"""``filtershift correlate STORE --metric M --with C``: does a layer quality metric go with a covariate?"""

import json
import math

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where, integer, non_negative_int, number


def register(sub) -> None:
    p = sub.add_parser("correlate", help="rank correlation of a layer quality metric with a covariate",
                       description="Spearman's rho between a per-layer quality metric (filtershift quality) and a "
                                   "numeric column of the quality or models table, over layers, with a percentile "
                                   "bootstrap interval that resamples whole models (their layers are not "
                                   "independent).")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--metric", default="variance_entropy_norm",
                   help="quality metric per layer (a column of filtershift quality; default %(default)s)")
    p.add_argument("--with", dest="covariate", required=True, metavar="COLUMN",
                   help="numeric covariate: a quality-table column (conv_depth_norm, n, in_channels, ...) or a "
                        "models-table column (total_filters, depth, ...)")
    p.add_argument("--boot", type=integer(2), default=1000, help="bootstrap replicates (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the resampling (default 0)")
    p.add_argument("--level", type=number(0, 1, lo_open=True, hi_open=True), default=0.95,
                   help="confidence level (default %(default)s)")
    p.add_argument("--eps", type=number(0, 1, lo_open=True, hi_open=True), default=0.01,
                   help="sparsity eps of the quality metrics (default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: rho, lower, upper, level, n_layers, n_models, n_left_out, metric, covariate")
    add_where(p)
    add_storage_options(p)
    computing(p, run)


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def run(args) -> int:
    from filtershift.stats.correlate import correlate

    r = correlate(args.dataset, args.metric, args.covariate, n_boot=args.boot, seed=args.seed, level=args.level,
                  sparsity_eps=args.eps)
    fields = {k: _num(r[k]) for k in ("rho", "lower", "upper")}
    counts = {k: int(r[k]) for k in ("n_layers", "n_models", "n_left_out")}
    if args.json:
        print(json.dumps({**fields, "level": args.level, **counts, "metric": args.metric,
                          "covariate": args.covariate, "n_boot": args.boot, "seed": args.seed,
                          "method": r.attrs["method"]}, indent=1))
        return 0
    print(f"Spearman's rho of {args.metric} with {args.covariate}: {r['rho'].item():+.3f} "
          f"[{r['lower'].item():+.3f}, {r['upper'].item():+.3f}] ({args.level:.0%} interval, {args.boot} "
          f"resamples of the models)")
    print(f"over {counts['n_layers']:,} layers of {counts['n_models']:,} models"
          + (f"; {counts['n_left_out']:,} layers left out (no finite value)" if counts["n_left_out"] else ""))
    return 0
