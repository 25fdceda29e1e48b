"""``filtershift verify STORE``"""

import json

from filtershift.cli._args import add_storage_options, storage_options


def register(sub) -> None:
    p = sub.add_parser("verify", help="check counts, record coverage and every chunk's checksum")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_storage_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from filtershift.store.verify import verify

    report = verify(args.store, storage_options=storage_options(args))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.store}: {report.chunks_checked}/{report.n_chunks} chunks checked, "
              f"{'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.ok else 1
