"""``filtershift quality STORE``: filter quality and degeneration per layer (or per model), as a table."""

import json
import math
import pathlib

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where, integer, number, positive_int, storage_options

COLUMNS = ["record", "model_id", "conv_depth", "layer", "n", "sparsity", "variance_entropy_norm",
           "variance_entropy_clean_norm", "orthogonality", "degeneration", "degenerated", "init_distance"]
MODEL_COLUMNS = ["model_id", "n_layers", "n_filters", "sparsity", "variance_entropy_norm",
                 "variance_entropy_clean_norm", "degenerated_share", "degenerated_filter_share"]
#: Rows printed as text when neither --top nor --out/--json is given.
TEXT_ROWS = 20


def register(sub) -> None:
    p = sub.add_parser("quality", help="filter quality and degeneration per layer or model",
                       description="Sparsity, variance entropy (raw and of the non-sparse filters, normalised), "
                                   "orthogonality (where channels are known), weight norms and a degenerated flag "
                                   "per record, from the shared statistics passes (torchconvquality definitions).")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--out", metavar="FILE",
                   help="write the table to FILE (.parquet or .csv; a path or a URL, e.g. s3://bucket/q.parquet)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects on stdout")
    p.add_argument("--top", type=positive_int, metavar="K", help="only the K most degenerated rows")
    p.add_argument("--eps", type=number(0, 1, lo_open=True, hi_open=True), default=0.01,
                   help="sparsity eps: a filter is sparse when every |w| < eps * max |w| of its layer "
                        "(default %(default)s)")
    p.add_argument("--convention", choices=("notebook", "torchconvquality"), default="notebook",
                   help="where the references differ, whose values: a layer of zeros has sparsity 0 (notebook) or 1, "
                        "filters of zero variance entropy NaN (notebook) or 0 (default %(default)s; docs/quality.md)")
    p.add_argument("--models", action="store_true", help="one row per model instead of per layer")
    p.add_argument("--init", metavar="INIT",
                   help="add init_distance, each layer's drift (kl_sym) from freshly initialised filters of INIT: "
                        "kaiming_uniform (PyTorch's Conv2d default), kaiming_normal, xavier_uniform, xavier_normal "
                        "or orthogonal (per layer; not with --models)")
    p.add_argument("--no-orthogonality", action="store_true", help="skip the orthogonality pass")
    p.add_argument("--max-sparsity", type=number(0, 1, lo_open=True), default=0.5,
                   help="degenerated when sparsity >= this (default %(default)s)")
    p.add_argument("--entropy-low", type=number(0, 1, hi_open=True), default=0.5,
                   help="degenerated when the clean normalised variance entropy <= this (default %(default)s)")
    p.add_argument("--entropy-high", type=number(0, lo_open=True), default=0.98,
                   help="degenerated (random-like) when it is >= this (default %(default)s)")
    p.add_argument("--min-filters", type=integer(2), default=16,
                   help="entropy criteria need this many non-sparse filters (default %(default)s)")
    add_where(p)
    add_storage_options(p)
    computing(p, run, check=check)


def check(args) -> None:
    """The entropy band is not empty and --out can be written (before a cluster starts)."""
    from filtershift.errors import InputError

    if args.entropy_high <= args.entropy_low:
        raise InputError(f"--entropy-high {args.entropy_high:g} must exceed --entropy-low {args.entropy_low:g}.")
    if args.init is not None:
        from filtershift.stats.init_reference import INITS

        if args.init not in INITS:
            raise InputError(f"--init {args.init}: unknown initialiser; choose one of {', '.join(INITS)}.")
        if args.models:
            raise InputError("--init gives a distance per layer; drop --models to get it.")
    if args.out:
        target(args.out)


def _cell(v):
    import pandas as pd

    if v is None or v is pd.NA:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def rows(table) -> list:
    """The table's rows as JSON-ready dicts (NaN and missing values as null, labels as strings)."""
    out = []
    for rec in table.astype(object).to_dict(orient="records"):
        out.append({str(k): _cell(v) for k, v in rec.items()})
    return out


def target(path: str) -> str:
    """Check ``--out`` before computing: a .parquet or .csv name, a local path or a writable URL."""
    from filtershift import outputs
    from filtershift.errors import InputError

    checked = outputs.check(path, "--out")
    suffix = pathlib.PurePosixPath(checked).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InputError(f"--out {path}: unknown table format {suffix or '(none)'!r}; use a .parquet or .csv name.")
    folder = pathlib.Path(checked).parent
    if not outputs.is_url(checked) and not folder.exists():
        raise InputError(f"--out {path}: folder {folder} does not exist; create it or choose another path.")
    return checked


def write(table, path: str, options: dict | None = None) -> None:
    """Write the table to a local path or URL (``s3://...``) atomically (see :mod:`filtershift.outputs`)."""
    import io

    from filtershift import outputs

    checked = target(path)
    buf = io.BytesIO()
    if checked.lower().endswith(".parquet"):
        table.to_parquet(buf, index=False)
    else:
        table.to_csv(buf, index=False)
    outputs.write_bytes(checked, buf.getvalue(), "--out", options)


def run(args) -> int:
    from filtershift.stats.quality import Thresholds, layer_quality, model_quality, most_degenerated

    thresholds = Thresholds(sparsity=args.max_sparsity, entropy_low=args.entropy_low,
                            entropy_high=args.entropy_high, min_filters=args.min_filters)
    ds = args.dataset
    if args.init is not None:
        from filtershift.stats import record_stats
        from filtershift.stats.init_reference import init_distance

        ds = record_stats(ds)  # one RecordStats: the quality table and the distance share pass 1
    table = layer_quality(ds, args.eps, thresholds=thresholds, orthogonality=not args.no_orthogonality,
                          convention=args.convention)
    if args.init is not None:
        table["init_distance"] = init_distance(ds, init=args.init).reindex(table["record"]).to_numpy()
    if args.models:
        table = model_quality(table)
    total = len(table)
    if args.top is not None:
        table = most_degenerated(table, args.top)
    if args.out:
        write(table, args.out, storage_options(args))
    if args.json:
        print(json.dumps(rows(table), indent=1))
        return 0
    n_bad = int(table["n_degenerated"].sum() if args.models else table["degenerated"].sum())
    what = "models" if args.models else "records"
    print(f"{total:,} {what}; {args.convention} convention; sparsity eps {args.eps}; thresholds: sparsity >= "
          f"{thresholds.sparsity}, clean "
          f"normalised entropy <= {thresholds.entropy_low} or >= {thresholds.entropy_high} "
          f"(with >= {thresholds.min_filters} non-sparse filters)")
    if args.out:
        print(f"wrote {len(table):,} rows to {args.out}")
    shown = table if args.top is not None else most_degenerated(table, TEXT_ROWS)
    if args.top is None:
        print(f"{n_bad:,} degenerated {'layers' if not args.models else 'layers in these models'}; "
              f"the {len(shown)} most degenerated:")
    cols = [c for c in (MODEL_COLUMNS if args.models else COLUMNS) if c in shown.columns]
    print(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
