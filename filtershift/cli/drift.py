"""``filtershift drift STORE --by COLUMN``: the drift matrix of a grouping (three passes over the data)."""

import json
import math

from filtershift.cli import computing
from filtershift.cli._args import (
    add_scope,
    add_storage_options,
    add_where,
    non_negative_int,
    number,
    positive_int,
    scope_note,
)
from filtershift.metrics import DEFAULT, METRICS, help_text

#: the initialisers of --init (filtershift.stats.init_reference.INITS; listed here so --help imports no numpy)
INIT_NAMES = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")
#: the pairs listed as not significant in the text output (the least significant first)
SHOWN = 10


def register(sub) -> None:
    p = sub.add_parser("drift", help="drift matrix between the groups of a grouping",
                       description="Per-group coefficient histograms in the PCA basis of the scaled filters, and "
                                   "the weighted divergence between every pair of groups.")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--by", action="append", required=True, metavar="COLUMN",
                   help="grouping: a column ('Visual Category', 'Task'), its coordinate name (visual_category), "
                        "'depth' (tenths of conv_depth_norm), 'model', or a numeric column cut into bins "
                        "(total_filters:quantiles=5, conv_depth_norm:deciles, in_channels:bins=0,64,512), or "
                        "NAME:each to count a cell listing several values ('A, B') in each of them (groups then "
                        "overlap; docs/analysis.md); repeat for a combined grouping")
    p.add_argument("--metric", choices=tuple(METRICS), default=DEFAULT,
                   help=f"{help_text()} (default %(default)s)")
    p.add_argument("--bins", type=positive_int, default=70,
                   help="histogram bins per component (default %(default)s)")
    p.add_argument("--min-filters", type=non_negative_int, default=1000, help="flag groups with fewer filters")
    p.add_argument("--min-models", type=non_negative_int, default=2, help="flag groups with fewer models")
    p.add_argument("--permutations", type=non_negative_int, default=999, metavar="N",
                   help="permutation test of every pair: N random splits of the two groups' models (all splits when "
                        "fewer exist), Benjamini-Hochberg adjusted; 0 skips it (default %(default)s)")
    p.add_argument("--alpha", type=number(0, 1, lo_open=True, hi_open=True), default=0.05,
                   help="false discovery rate for 'not significant' (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--explain", type=non_negative_int, default=3, metavar="K",
                   help="for the K most drifted pairs, each component's share of the drift and the bins that "
                        "drive it (default %(default)s; --json always carries every pair's per-component terms)")
    p.add_argument("--init", action="append", metavar="NAME", choices=INIT_NAMES,
                   help="add the filters of a fresh random initialisation as a group 'init:NAME' (one of "
                        f"{', '.join(INIT_NAMES)}; repeatable): which groups look untrained (docs/quality.md)")
    p.add_argument("--within", metavar="COLUMN",
                   help="compare the groups of --by inside each stratum of this grouping (e.g. training_dataset, "
                        "depth) and pool the strata, weighted by the pair's filters (docs/analysis.md)")
    p.add_argument("--keep-missing", action="store_true",
                   help="keep the models whose label is missing as a group of their own ('unknown'); by default "
                        "they are left out, as in a pandas groupby, and the output says how many")
    p.add_argument("--json", action="store_true",
                   help="print JSON: labels, matrix, n_filters, n_models, small, metric, bins, by, "
                        "n_filters_dropped, n_models_dropped, missing_labels, overlapping, contributions (per pair and "
                        "component); with --permutations, p_value and p_adjusted matrices (null: no test), "
                        "permutations, alpha; basis, range (store or selection) and range_values")
    add_where(p)
    add_scope(p)
    add_storage_options(p)
    computing(p, run)


def _num(v):
    return float(v) if math.isfinite(v) else None


def _matrix(values):
    return [[_num(v) for v in row] for row in values]


def _row(values):
    return [_num(v) for v in values]


def run(args) -> int:
    from filtershift.stats import distributions, drift, drift_components, drift_test
    from filtershift.stats.divergence import DROPPED
    from filtershift.stats.scope import resolve

    scope = resolve(args.dataset, args.basis, args.range)
    basis = scope.basis
    by = args.by[0] if len(args.by) == 1 else args.by
    if args.within:
        return _run_within(scope, by, args)
    dist = distributions(scope.stats, basis, by=by, bins=args.bins, min_filters=args.min_filters,
                         min_models=args.min_models, keep_missing=args.keep_missing, range=scope.range)
    if args.init:
        from filtershift.stats import init_reference

        dist = init_reference(dist, basis, inits=tuple(dict.fromkeys(args.init)))
    d = drift(dist, args.metric)
    test = drift_test(dist, args.metric, n_perm=args.permutations, seed=args.seed, alpha=args.alpha) \
        if args.permutations else None
    labels = [str(g) for g in d["group_a"].values]
    if args.json:
        out = {"labels": labels, "matrix": _matrix(d.values),
               "n_filters": dist["n_filters"].values.tolist(), "n_models": dist["n_models"].values.tolist(),
               "small": dist["small"].values.tolist(), "metric": args.metric, "bins": args.bins,
               "by": dist.attrs["by"], **{k: dist.attrs[k] for k in DROPPED},
               "overlapping": bool(dist.attrs.get("overlapping", False)), **_scope_json(scope, args)}
        out["contributions"] = [[_row(v) for v in row] for row in drift_components(dist, args.metric).values]
        if test is not None:
            out.update({"p_value": _matrix(test["p_value"].values), "p_adjusted": _matrix(test["p_adjusted"].values),
                        "permutations": args.permutations, "alpha": args.alpha, "seed": args.seed})
        print(json.dumps(out, indent=1))
        return 0
    width = max([len(x) for x in labels] + [8])
    print(f"{args.metric} drift by {' x '.join(dist.attrs['by'])} ({args.bins} bins; * = fewer than "
          f"{args.min_filters} filters or {args.min_models} models)")
    print(" " * (width + 22) + " ".join(f"{i:>9}" for i in range(len(labels))))
    for i, (lab, row) in enumerate(zip(labels, d.values)):
        flag = "*" if dist["small"].values[i] else " "
        cells = " ".join(f"{v:>9.4g}" for v in row)
        print(f"{i:>3} {lab:<{width}}{flag} {int(dist['n_models'][i]):>5} {int(dist['n_filters'][i]):>11,} {cells}")
    print(dropped_note(dist.attrs))
    if dist.attrs.get("overlapping"):
        print("groups overlap (NAME:each): a model whose cell lists several values is in each of their groups with "
              "all its filters, so the group sizes add up to more than the store; in the permutation test the "
              "models in both groups of a pair stay in both")
    print(scope_note(scope, bool(args.where)))
    if test is not None:
        _print_test(test, labels, args)
    if args.explain:
        _print_explain(dist, d, labels, args)
    return 0


def _print_explain(dist, d, labels, args) -> None:
    """Which components and bins drive the most drifted pairs."""
    import numpy as np

    from filtershift.stats import drift_components, top_bins

    parts = drift_components(dist, args.metric).values
    values = np.where(np.isfinite(d.values), d.values, -np.inf)
    upper = [(a, b) for a, b in zip(*np.triu_indices(len(labels), 1)) if np.isfinite(d.values[a, b])]
    for a, b in sorted(upper, key=lambda ab: -values[ab])[:args.explain]:
        total = d.values[a, b]
        shares = parts[a, b] / total if total > 0 else parts[a, b] * np.nan
        lead = np.argsort(shares)[::-1][:3]
        bins = top_bins(dist, labels[a], labels[b], args.metric, top=3)
        print(f"{labels[a]} vs {labels[b]} ({total:.4g}): "
              + ", ".join(f"component {k} {shares[k]:.0%}" for k in lead)
              + "; bins " + ", ".join(f"c{r.component} [{r.lo:+.2f}, {r.hi:+.2f}) {r.p_a:.3g} vs {r.p_b:.3g}"
                                      for r in bins.itertuples()))


def dropped_note(attrs: dict) -> str:
    """What a grouping left out for a missing label, in words."""
    if attrs["missing_labels"] == "kept":
        return "missing labels: kept as a group of their own (--keep-missing)"
    if not attrs["n_filters_dropped"] and not attrs["n_models_dropped"]:
        return "missing labels: none left out"
    return (f"missing labels: left out {attrs['n_models_dropped']} model(s), {attrs['n_filters_dropped']:,} filters "
            f"without a {' or '.join(attrs['by'])} label (--keep-missing keeps them as a group)")


def _print_test(test, labels, args) -> None:
    """The pairs the permutation test cannot separate from the spread between models, and the untestable ones."""
    import numpy as np

    upper = list(zip(*np.triu_indices(len(labels), 1)))
    adjusted = test["p_adjusted"].values
    weak = [(a, b) for a, b in upper if np.isfinite(adjusted[a, b]) and adjusted[a, b] > args.alpha]
    untested = [(a, b) for a, b in upper if not np.isfinite(adjusted[a, b])]
    print(f"permutation test: {args.permutations} splits of the models per pair at most (seed {args.seed}), "
          f"Benjamini-Hochberg at {args.alpha:g}: {len(upper) - len(weak) - len(untested)} of {len(upper)} pairs "
          "significant")
    if weak:
        shown = sorted(weak, key=lambda ab: -adjusted[ab])[:SHOWN]
        more = f"; and {len(weak) - SHOWN} more (--json has every p-value)" if len(weak) > SHOWN else ""
        print("not significant: " + "; ".join(f"{a}-{b} ({labels[a]} vs {labels[b]}, p_adj={adjusted[a, b]:.3g})"
                                              for a, b in shown) + more)
    if untested:
        print(f"not testable (one model on each side, or an empty group): {len(untested)} pairs")


def _scope_json(scope, args) -> dict:
    """What --json says about the basis and range: whose (store or selection), the range, the selection."""
    return {"basis": scope.basis_scope, "range": scope.range_scope, "range_values": list(scope.range),
            "basis_n_filters": scope.attrs()["basis_n_filters"], "where": args.where}


def _run_within(scope, by, args) -> int:
    """``--within``: the drift inside each stratum and pooled (no permutation test or attribution)."""

    from filtershift.errors import InputError
    from filtershift.stats import conditional_drift

    if not isinstance(by, str):
        raise InputError("--within takes one --by grouping; repeat neither, or drop --within for a combined one.")
    c = conditional_drift(scope.stats, scope.basis, by=by, within=args.within, metric=args.metric, bins=args.bins,
                          min_filters=args.min_filters, min_models=args.min_models, keep_missing=args.keep_missing,
                          range=scope.range)
    groups, strata = [str(g) for g in c["group_a"].values], [str(s) for s in c["stratum"].values]
    if args.json:
        print(json.dumps({"labels": groups, "strata": strata, "pooled": _matrix(c["pooled"].values),
                          "pooled_weight": c["pooled_weight"].values.tolist(),
                          "drift": [_matrix(m) for m in c["drift"].values], "weight": c["weight"].values.tolist(),
                          "n_filters": c["n_filters"].values.tolist(), "n_models": c["n_models"].values.tolist(),
                          "metric": args.metric, "bins": args.bins, "by": c.attrs["by"],
                          "within": c.attrs["within"], **_scope_json(scope, args)}, indent=1))
        return 0
    width = max([len(x) for x in groups] + [8])
    print(f"{args.metric} drift by {c.attrs['by']} within {c.attrs['within']}, pooled over {len(strata)} strata "
          f"(weights: the pair's filters in each stratum; {args.bins} bins)")
    print(" " * (width + 4) + " ".join(f"{i:>9}" for i in range(len(groups))))
    for i, (lab, row) in enumerate(zip(groups, c["pooled"].values)):
        print(f"{i:>3} {lab:<{width}} " + " ".join(f"{v:>9.4g}" for v in row))
    print(scope_note(scope, bool(args.where)))
    shared = (c["n_filters"].values > 0).sum(1)
    print("strata with at least two groups: " + ", ".join(f"{s} ({int(k)})" for s, k in zip(strata, shared) if k >= 2)
          + (f"; {int((shared < 2).sum())} strata hold one group only and compare nothing" if (shared < 2).any()
             else ""))
    return 0
