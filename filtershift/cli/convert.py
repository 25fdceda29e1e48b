"""``filtershift convert SRC.h5 DST.zarr``"""

from filtershift.cli._args import add_storage_options, positive_int, storage_options

#: filtershift.store.format's CODECS, DEFAULT_CODEC and DEFAULT_CHUNK_FILTERS, repeated so that building the parser
#: imports no zarr, numpy or pandas; tests/test_cli_boundary.py checks that they agree.
CODECS = ("none", "zstd", "lz4")
DEFAULT_CODEC = "none"
DEFAULT_CHUNK_FILTERS = 1 << 18


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert a CNN-Filter-DB dataset.h5 into a filtershift store",
                       description="Stream the filters of a CNN-Filter-DB dataset.h5 into a chunked Zarr v3 "
                                   "store (memory bounded by the chunk size), validate it, then mark it complete.")
    p.add_argument("src", help="the dataset.h5 file")
    p.add_argument("dst", help="destination store: a directory or an fsspec URL (s3://bucket/db.zarr)")
    p.add_argument("--chunk-filters", type=positive_int, default=DEFAULT_CHUNK_FILTERS,
                   help="filters per chunk (default %(default)s = 9 MiB)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC,
                   help="compressor (default %(default)s; checksums are always on)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at DST")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted conversion into DST; starts one if DST does not exist yet and "
                        "leaves a complete store of the same source alone, so a scheduled job can always pass it")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickled objects in the meta table (runs code from the file: trusted files only)")
    p.add_argument("--nonfinite", choices=("error", "zero", "keep"), default="error",
                   help="NaN/Inf filter values: fail (default), replace by 0, or keep")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.store.convert import convert
    from filtershift.store.verify import info

    options = storage_options(args)
    convert(args.src, args.dst, chunk_filters=args.chunk_filters, codec=args.codec, overwrite=args.overwrite,
            resume=args.resume, trust_pickle=args.trust_pickle, nonfinite=args.nonfinite, storage_options=options)
    summary = info(args.dst, storage_options=options)
    print(f"{summary['store']}: {summary['n_filters']:,} filters, {summary['n_records']:,} records, "
          f"{summary['n_models']:,} models")
    return 0
