"""``filtershift upgrade STORE``"""

from filtershift.cli._args import add_storage_options, storage_options


def register(sub) -> None:
    p = sub.add_parser("upgrade", help="migrate a schema-1 store to schema 2 in place (atomic, resumable)",
                       description="Migrate a schema-1 store to the current layout (schema 2: tables as Zarr "
                                   "arrays that plain xarray opens, every chunk written). The store stays readable "
                                   "throughout; the switch is one atomic write, and running the command again "
                                   "finishes an interrupted upgrade. See docs/format.md.")
    p.add_argument("store", help="store path or URL")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.store.upgrade import upgrade

    print(upgrade(args.store, storage_options=storage_options(args)).message())
    return 0
