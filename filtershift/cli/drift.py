"""``filtershift drift STORE --by COLUMN``: the drift matrix of a grouping (three passes over the data)."""

import json
import math

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where, non_negative_int, positive_int
from filtershift.metrics import DEFAULT, METRICS, help_text


def register(sub) -> None:
    p = sub.add_parser("drift", help="drift matrix between the groups of a grouping",
                       description="Per-group coefficient histograms in the PCA basis of the scaled filters, and "
                                   "the weighted divergence between every pair of groups.")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--by", action="append", required=True, metavar="COLUMN",
                   help="grouping: a column ('Visual Category', 'Task'), its coordinate name (visual_category), "
                        "'depth' (deciles of conv_depth_norm) or 'model'; repeat for a combined grouping")
    p.add_argument("--metric", choices=tuple(METRICS), default=DEFAULT,
                   help=f"{help_text()} (default %(default)s)")
    p.add_argument("--bins", type=positive_int, default=70,
                   help="histogram bins per component (default %(default)s)")
    p.add_argument("--min-filters", type=non_negative_int, default=1000, help="flag groups with fewer filters")
    p.add_argument("--min-models", type=non_negative_int, default=2, help="flag groups with fewer models")
    p.add_argument("--json", action="store_true",
                   help="print JSON: labels, matrix, n_filters, n_models, small, metric, bins, by")
    add_where(p)
    add_storage_options(p)
    computing(p, run)


def _num(v):
    return float(v) if math.isfinite(v) else None


def run(args) -> int:
    from filtershift.stats import distributions, drift, fit_basis

    ds = args.dataset
    basis = fit_basis(ds)
    by = args.by[0] if len(args.by) == 1 else args.by
    dist = distributions(ds, basis, by=by, bins=args.bins, min_filters=args.min_filters,
                         min_models=args.min_models)
    d = drift(dist, args.metric)
    labels = [str(g) for g in d["group_a"].values]
    if args.json:
        print(json.dumps({"labels": labels, "matrix": [[_num(v) for v in row] for row in d.values],
                          "n_filters": dist["n_filters"].values.tolist(), "n_models": dist["n_models"].values.tolist(),
                          "small": dist["small"].values.tolist(), "metric": args.metric, "bins": args.bins,
                          "by": dist.attrs["by"]}, indent=1))
        return 0
    width = max([len(x) for x in labels] + [8])
    print(f"{args.metric} drift by {' x '.join(dist.attrs['by'])} ({args.bins} bins; * = fewer than "
          f"{args.min_filters} filters or {args.min_models} models)")
    print(" " * (width + 22) + " ".join(f"{i:>9}" for i in range(len(labels))))
    for i, (lab, row) in enumerate(zip(labels, d.values)):
        flag = "*" if dist["small"].values[i] else " "
        cells = " ".join(f"{v:>9.4g}" for v in row)
        print(f"{i:>3} {lab:<{width}}{flag} {int(dist['n_models'][i]):>5} {int(dist['n_filters'][i]):>11,} {cells}")
    return 0
