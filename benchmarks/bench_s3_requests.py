"""Requests that commands send to object storage: a synthetic 5-chunk store on moto's S3 (127.0.0.1, the test
harness of tests/_s3.py), each command run as the CLI runs it, every request counted by a WSGI middleware in front
of moto. Request counts are exact (wall times on moto measure moto's Python as much as ours).

    python benchmarks/bench_s3_requests.py [--append]

Needs the ``test`` extra (moto, s3fs).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import append_section
from _s3 import moto_s3

COMMANDS = (["pca"], ["drift", "--by", "task"], ["quality"])


def kind(path: str) -> str:
    """What a request path reads: store metadata, a table column chunk, a weights chunk."""
    if "/tables/" in path:
        return "table metadata" if path.endswith("zarr.json") else "table column chunk"
    if "/weights/c/" in path:
        return "weights chunk"
    return "metadata" if path.endswith("zarr.json") else "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args()
    from filtershift.cli import main as cli
    from filtershift.store.convert import convert
    from filtershift.synth import synthesize

    seen: list[tuple[str, str]] = []

    def wrap(app):
        def counting(environ, start_response):
            seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
            return app(environ, start_response)
        return counting

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
        tmp = Path(tmp)
        src = synthesize(tmp / "src.h5", n_filters=5 * 4096 - 700, n_models=6, seed=3)
        convert(src, tmp / "db.zarr", chunk_filters=4096)
        (tmp / "aws").mkdir()
        with moto_s3(tmp / "aws", wrap=wrap) as s3:
            s3.fs().put(str(tmp / "db.zarr") + "/", f"{s3.bucket}/db.zarr", recursive=True)
            for command in COMMANDS:
                seen.clear()
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    rc = cli([command[0], f"s3://{s3.bucket}/db.zarr", *command[1:], "--json",
                              "--scheduler", "threads"])
                wall = time.perf_counter() - t0
                if rc != 0:
                    sys.exit(f"{' '.join(command)} failed with exit code {rc}")
                by = collections.Counter((m, kind(path)) for m, path in seen)
                rows.append((" ".join(command), len(seen), by, wall))
    kinds = sorted({k for _, _, by, _ in rows for k in by})
    head = ["command", "requests", *[f"{m} {k}" for m, k in kinds], "wall s (moto)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for command, total, by, wall in rows:
        lines.append("| " + " | ".join([f"`{command}`", str(total), *[str(by.get(k, 0)) for k in kinds],
                                        f"{wall:.1f}"]) + " |")
    body = ("One 5-chunk schema-2 store (20,780 filters, 6 models), moto's S3 on 127.0.0.1, threaded scheduler, "
            "commands in this order in one process (the first pays boto's start-up).\n\n" + "\n".join(lines))
    print(body)
    if args.append:
        append_section("Requests to object storage per command", body)


if __name__ == "__main__":
    main()
