"""``filtershift demo``: the main job on built-in synthetic data."""

from filtershift.cli import computing
from filtershift.cli._args import non_negative_int, positive_int


def register(sub) -> None:
    p = sub.add_parser("demo", help="synthesize, convert, analyse and report on built-in data",
                       description="Synthesize about a million filters in the CNN-Filter-DB layout (with planted "
                                   "shifts and degenerate layers), convert them to a store, analyse and write "
                                   "the report into --out.")
    p.add_argument("--out", default="filtershift-demo", help="output directory (default %(default)s)")
    p.add_argument("--filters", type=positive_int, default=1_000_000, help="number of filters (default %(default)s)")
    p.add_argument("--models", type=positive_int, default=48, help="number of models (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    computing(p, run, check=check)


def check(args) -> None:
    """Enough filters for the models (before a cluster starts)."""
    from filtershift.errors import InputError
    from filtershift.synth import MIN_MODEL

    if args.filters < args.models * MIN_MODEL:
        raise InputError(f"--filters {args.filters:,} is too few for --models {args.models}: each model needs at "
                         f"least {MIN_MODEL} filters, so give --filters {args.models * MIN_MODEL:,} or more, or "
                         "fewer --models.")


def run(args) -> int:
    from filtershift.demo import run_demo

    summary = run_demo(args.out, n_filters=args.filters, n_models=args.models, seed=args.seed)
    info = summary["info"]
    t = summary["timings"]
    print(f"synthesized {info['n_filters']:,} filters of {info['n_models']} models "
          f"({info['n_records']} records) in {t['synthesize_s']:.1f} s; converted in {t['convert_s']:.1f} s")
    print(f"store:  {summary['store']}")
    if "report" in summary:
        print(f"report: {summary['report']}  ({t.get('report_s', 0):.1f} s)")
    return 0
