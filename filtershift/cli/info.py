"""``filtershift info STORE``"""

import json

from filtershift.cli._args import add_storage_options, storage_options


def register(sub) -> None:
    p = sub.add_parser("info", help="counts, groups and provenance of a store")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true", help="print JSON (keys n_filters, n_models, n_records, ...)")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.store.verify import info

    summary = info(args.store, storage_options=storage_options(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"store      {summary['store']} (schema {summary['schema_version']}, version {summary['version']})")
    print(f"filters    {summary['n_filters']:,}")
    print(f"models     {summary['n_models']:,}")
    print(f"records    {summary['n_records']:,}")
    print(f"chunks     {summary['chunk_filters']:,} filters, codec {summary['codec']}")
    for name, groups in summary["groups"].items():
        print(f"\n{name:<32} {'models':>8} {'filters':>14}")
        for label, g in groups.items():
            print(f"  {label:<30} {g['n_models']:>8,} {g['n_filters']:>14,}")
    print("\nprovenance")
    for p in summary["provenance"]:
        print(f"  {p['time']}  {p['kind']:<6} {p['source']}  sha256 {str(p.get('sha256'))[:16]}…  "
              f"by {p['converter']}")
    return 0
