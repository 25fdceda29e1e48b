"""``filtershift extract MODEL [MODEL ...] --store STORE``"""

from filtershift.cli._args import add_storage_options, storage_options


def register(sub) -> None:
    p = sub.add_parser("extract", help="add trained models (ONNX, PyTorch, safetensors) to a store",
                       description="Extract the 3x3 convolution filters of each model and append it to the "
                                   "store, one atomic commit per model (created if missing). Models whose "
                                   "weights are already stored are skipped.")
    p.add_argument("models", nargs="+", help="model files: .onnx, .pt/.pth/.bin/.ckpt (state_dict), "
                                             ".safetensors")
    p.add_argument("--store", required=True, help="store path or URL")
    p.add_argument("--meta", help="CSV of model meta data (Name, Task, Visual Category, Training-Dataset, "
                                  "...) with a 'model' column naming each model file")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.ingest import read_model
    from filtershift.store.append import add_models

    extracted = [read_model(path) for path in args.models]
    result = add_models(args.store, extracted, meta=args.meta, storage_options=storage_options(args))
    print(f"{args.store}: added {len(result.added)} model(s) {result.added}, skipped {len(result.skipped)}; "
          f"{result.n_filters:,} filters in version {result.version}")
    return 0
