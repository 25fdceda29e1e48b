"""``filtershift compare MODEL --store STORE``"""

import json

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where, positive_int, storage_options
from filtershift.metrics import DEFAULT, METRICS, help_text


def register(sub) -> None:
    p = sub.add_parser("compare", help="place a model against the database: drift to groups and models",
                       description="Project a model's 3x3 filters on the database basis and report its drift "
                                   "to every group of each grouping and to every database model (nearest "
                                   "first), as a table, JSON (--json) and a figure (--figure).")
    p.add_argument("model", help="model file (.onnx, .pt/.pth/.bin/.ckpt state_dict, .safetensors)")
    p.add_argument("--store", required=True, help="database store path or URL")
    p.add_argument("--by", action="append", default=None,
                   help="grouping (repeatable; default task and visual_category)")
    p.add_argument("--metric", choices=tuple(METRICS), default=DEFAULT, help=help_text())
    p.add_argument("--bins", type=positive_int, default=70)
    p.add_argument("--top", type=positive_int, default=10, help="nearest database models to list")
    p.add_argument("--figure", default=None, help="write the figure to this PNG/SVG path or URL (s3://...)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_where(p)
    add_storage_options(p)
    computing(p, run, check=check)


def check(args) -> None:
    """The model is a file of a known format and --figure can be written (before a cluster starts)."""
    from filtershift.compare import figure_target
    from filtershift.ingest import format_of
    from filtershift.ingest.model import check_model_file

    format_of(args.model)
    check_model_file(args.model)
    if args.figure:
        figure_target(args.figure)


def run(args) -> int:
    from filtershift.compare import compare, figure_target, layer_table, plot, reference_note, summary_table

    if args.figure:
        figure_target(args.figure)
    result = compare(args.model, args.dataset, by=args.by or ["task", "visual_category"], metric=args.metric,
                     bins=args.bins, top=args.top, storage_options=storage_options(args))
    table = summary_table(result)
    if args.figure:
        plot(result, args.figure, storage_options=storage_options(args))
    nearest = [{"model_id": int(i), "name": str(n), "drift": float(d)} for i, n, d in zip(
        result["nearest_model_id"].values,
        result["nearest_name"].values if "nearest_name" in result else result["nearest_model_id"].values,
        result["nearest_drift"].values)]
    if args.json:
        layers, depths = (layer_table(result, dim).astype(object).where(lambda t: t.notna(), None)
                          for dim in ("layer", "depth"))
        print(json.dumps({**{k: v for k, v in result.attrs.items()}, "groups": table.to_dict("records"),
                          "nearest_models": nearest, "layers": layers.to_dict("records"),
                          "depths": depths.to_dict("records")}, indent=2, default=float))
        return 0
    a = result.attrs
    print(f"{a['model']}: {a['n_filters']:,} 3x3 filters in {a['n_layers']} layers; {a['metric']} drift; "
          f"{a['outside_range']:.1%} of coefficients outside the database range")
    for key, t in table.groupby("grouping", sort=False):
        print(f"\nby {key} (nearest first; * small group)")
        for row in t.itertuples():
            print(f"  {row.group:<32} {row.drift:10.4f}  {row.n_models:>5} models {row.n_filters:>12,} "
                  f"filters{' *' if row.small else ''}")
    print("\nnearest database models")
    for n in nearest:
        print(f"  {n['model_id']:>6}  {n['name']:<32} {n['drift']:10.4f}")
    print(f"\nlayer quality (value, percentile); {reference_note(result)}")
    for row in layer_table(result).itertuples():
        print(f"  {row.layer:<28} n={row.n:<7} sparsity {row.sparsity:.3f} ({row.sparsity_percentile:5.1f}%)  "
              f"entropy {row.variance_entropy_norm:.3f} ({row.variance_entropy_norm_percentile:5.1f}%)"
              f"{'  DEGENERATED' if row.degenerated else ''}")
    depths = layer_table(result, "depth")
    if len(depths):
        print("\nper conv depth, parallel branches pooled (percentile among the database's model x conv depth "
              "records)")
        for row in depths.itertuples():
            print(f"  depth {row.depth:<22} n={row.n:<7} sparsity {row.sparsity:.3f} ({row.sparsity_percentile:5.1f}%)"
                  f"  entropy {row.variance_entropy_norm:.3f} ({row.variance_entropy_norm_percentile:5.1f}%)")
    if args.figure:
        print(f"\nfigure: {args.figure}")
    return 0
