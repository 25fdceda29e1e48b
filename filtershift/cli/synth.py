"""``filtershift synth OUT``"""

from filtershift.cli._args import non_negative_int, number, positive_int

#: The choices of filtershift.synth (FORMATS, STYLES, META_FORMATS, LAYOUTS, DTYPES), repeated so that
#: building the parser imports no numpy or h5py; tests/test_cli_boundary.py checks that they agree.
FORMATS = ("h5", "zarr")
STYLES = ("v1.0", "v0.1")
META_FORMATS = ("table", "fixed", "csv")
LAYOUTS = ("flat", "3x3")
DTYPES = ("float32", "float16", "float64")
ROBUST_STRATA = ("ImageNet1k", "CIFAR-10", "CIFAR-100", "SVHN")


def register(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic CNN-Filter-DB data set with planted truth",
                       description="Generate a deterministic synthetic dataset.h5 (or store) in the CNN-Filter-DB "
                                   "layout with planted distribution shifts and degenerate records; the planted "
                                   "truth goes to OUT.truth.json.")
    p.add_argument("out", metavar="OUT", help="output file (.h5) or store directory (--format zarr)")
    p.add_argument("--filters", type=positive_int, default=1_000_000, help="number of filters (default %(default)s)")
    p.add_argument("--models", type=positive_int, default=40, help="number of models (default %(default)s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="h5",
                   help="h5 source, or the store convert would make of it (written directly, no temporary h5)")
    p.add_argument("--style", choices=STYLES, default="v1.0",
                   help="release layout: v1.0 ('start:end' ids, 'filters') or v0.1 (id lists, 'filter')")
    p.add_argument("--meta-format", choices=META_FORMATS, default=None,
                   help="pandas HDF format of the meta table, or csv: its CSV text as one bytes dataset "
                        "(default: table for v1.0, fixed for v0.1)")
    p.add_argument("--layout", choices=LAYOUTS, default="flat", help="filters as (N, 9) or (N, 3, 3)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="filter dtype (default %(default)s)")
    p.add_argument("--shuffle-records", action="store_true",
                   help="write the records' filters in a permuted order (v0.1: non-contiguous id lists)")
    p.add_argument("--layer-meta", action="store_true",
                   help="meta table with one row per layer (layer_id level, layer_name, channels; parallel "
                        "branches) and extra model columns (Robust, Top-1 accuracy, Epochs, Training Regime)")
    p.add_argument("--robust-within", choices=ROBUST_STRATA, metavar="DATASET",
                   help="with --layer-meta: plant an effect of Robust inside this training data set only (one of "
                        f"{', '.join(ROBUST_STRATA)}): every natural-image Classification model is trained on it, "
                        "every second one is robust and draws 30%% of its filters from the smooth family")
    p.add_argument("--entropy-gain", type=number(0), default=0.0, metavar="G",
                   help="plant a fall of variance entropy with model size: each filter x (1 + g (k . u)^2), u the "
                        "unit constant kernel, g from 0 (fewest filters) to G (most), geometric in log filters; "
                        "drifts unchanged (default 0: off)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--resume", action="store_true",
                   help="--format zarr: finish a store whose writing was interrupted (same arguments)")
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift import synth

    meta_format = args.meta_format or ("fixed" if args.style == "v0.1" else "table")
    out = synth.synthesize(args.out, n_filters=args.filters, n_models=args.models, seed=args.seed,
                           format=args.format, style=args.style, meta_format=meta_format, layout=args.layout,
                           dtype=args.dtype, shuffle_records=args.shuffle_records, overwrite=args.overwrite,
                           resume=args.resume, layer_meta=args.layer_meta, robust_within=args.robust_within,
                           entropy_gain=args.entropy_gain)
    truth = synth.read_truth(out)
    print(f"{out}: {truth['n_filters']:,} filters, {truth['n_records']:,} records, {truth['n_models']:,} models; "
          f"truth in {synth.truth_path(out)}")
    return 0
