"""Resume benchmark: how much work a SIGKILL of ``filtershift convert`` loses, at several points of a run.

    python benchmarks/bench_resume.py --filters 10000000 --models 200 [--workdir DIR] [--points 0.2s,1s,25%,50%,90%]

One uninterrupted ``filtershift convert SRC REF.zarr`` is timed first (wall time, and when the destination, its first
progress record and its first chunk appear). Then, for each point (seconds, or a percentage of that wall time),
``filtershift convert SRC DB.zarr --resume`` is started (the form a scheduled job always uses), killed with SIGKILL
at that point, and run again with ``--resume`` to the end. Reported per point: when the killed run wrote its first
checkpoint, the rows committed at the kill (by the progress file), the killed + resumed wall time against the
uninterrupted one (the excess is the work lost), and whether the resumed store equals the uninterrupted one
(``filtershift verify``, the weights read with zarr, the tables with pandas, the manifest but for timestamps).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_section  # noqa: E402

PROGRESS = ".filtershift-progress.json"
POLL_S = 0.005


def filtershift(*args: str) -> list[str]:
    return [sys.executable, "-m", "filtershift.cli", *args]


def read_progress(db: Path) -> dict | None:
    try:
        return json.loads((db / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def watch(cmd: list[str], db: Path, kill_at: float | None = None) -> dict:
    """Run ``cmd``, polling ``db``; SIGKILL it ``kill_at`` seconds after its start (None: let it finish).
    Returns the wall time, when the destination, the first progress record and the first chunk appeared, and
    the progress record at the end."""
    seen: dict = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        t = time.perf_counter() - t0
        if kill_at is not None and t >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        if "dst" not in seen and (db / "zarr.json").exists():
            seen["dst"] = t
        if "checkpoint" not in seen and (db / PROGRESS).exists():
            seen["checkpoint"] = t
        if "first_chunk" not in seen and (read_progress(db) or {}).get("done", 0) >= 1:
            seen["first_chunk"] = t
        time.sleep(POLL_S)
    _, err = proc.communicate()
    seen["wall"] = time.perf_counter() - t0
    seen["returncode"] = proc.returncode
    if kill_at is None and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    seen["progress"] = read_progress(db)
    return seen


def manifest(db: Path) -> dict:
    m = json.loads((db / "zarr.json").read_text())["attributes"]["filtershift"]
    for entry in m["provenance"]:
        entry.pop("time", None)
    return m


def same_store(db: Path, ref: Path) -> str:
    """'yes' when ``db`` equals ``ref`` (verify, weights, tables, manifest); otherwise what differs."""
    verify = subprocess.run(filtershift("verify", str(db)), capture_output=True, text=True)
    if verify.returncode != 0:
        return f"verify failed: {verify.stdout.strip()[-200:]} {verify.stderr.strip()[-200:]}"
    got, want = manifest(db), manifest(ref)
    if got != want:
        return "manifest differs"
    a, b = zarr.open_array(str(db / "weights"), mode="r"), zarr.open_array(str(ref / "weights"), mode="r")
    step = want["chunk_filters"]
    for lo in range(0, want["n_filters"], step):
        if not np.array_equal(a[lo:lo + step], b[lo:lo + step]):
            return f"weights differ in rows {lo}:{lo + step}"
    for name in ("records", "models"):
        v = want["version"]
        if not pd.read_parquet(db / "tables" / f"{name}-v{v}.parquet").equals(
                pd.read_parquet(ref / "tables" / f"{name}-v{v}.parquet")):
            return f"{name} table differs"
    return "yes"


def parse_point(text: str, wall: float) -> tuple[str, float]:
    if text.endswith("%"):
        return text, float(text[:-1]) / 100 * wall
    return text, float(text.rstrip("s"))


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, default=10_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--workdir", default=None, help="keeps the source between runs when given")
    ap.add_argument("--points", default="0.2s,1s,25%,50%,90%,98%",
                    help="kill points: seconds after start (0.2s) or percent of the uninterrupted wall time")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fs-bench-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"src-{args.filters}-{args.models}.h5"
    if not src.exists():
        subprocess.run(filtershift("synth", str(src), "--filters", str(args.filters), "--models",
                                   str(args.models)), check=True, stdout=subprocess.DEVNULL)
    n = args.filters
    ref = work / "ref.zarr"
    shutil.rmtree(ref, ignore_errors=True)
    base = watch(filtershift("convert", str(src), str(ref)), ref)
    chunk = manifest(ref)["chunk_filters"]
    n_chunks = -(-n // chunk)
    wall = base["wall"]
    print(f"uninterrupted: {wall:.2f} s; destination at {fmt_s(base.get('dst'))} s, first checkpoint at "
          f"{fmt_s(base.get('checkpoint'))} s, first chunk at {fmt_s(base.get('first_chunk'))} s", flush=True)
    rows = [f"Source: `filtershift synth` with {n:,} filters, {args.models} models ({n_chunks} chunks of {chunk:,}). "
            f"Uninterrupted `filtershift convert`: {wall:.2f} s wall; its destination and first checkpoint "
            f"(progress file) appeared at {fmt_s(base.get('checkpoint'))} s "
            f"({base.get('checkpoint', 0) / wall:.0%} of the run, after the interpreter start, imports and the "
            f"validation of the source in a child process), its first chunk at {fmt_s(base.get('first_chunk'))} s.",
            "",
            "| kill at | s | first checkpoint of killed run (s) | state at kill | rows committed at kill | "
            "source hash recorded | resume s | killed + resumed s | / uninterrupted | lost s | equal |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for text in args.points.split(","):
        label, at = parse_point(text.strip(), wall)
        db = work / "db.zarr"
        shutil.rmtree(db, ignore_errors=True)
        killed = watch(filtershift("convert", str(src), str(db), "--resume"), db, kill_at=at)
        saved = killed["progress"] or {}
        if killed["returncode"] != -signal.SIGKILL:
            state, committed = "finished before the kill", n
        elif not (db / "zarr.json").exists():
            state, committed = "no destination", 0
        else:
            state = manifest(db)["state"]
            committed = n if state == "complete" else min(saved.get("done", 0) * chunk, n)
        hashed = ("yes" if saved.get("sha256") else "no") if state == "converting" else "-"
        resumed = watch(filtershift("convert", str(src), str(db), "--resume"), db)
        total = killed["wall"] + resumed["wall"]
        equal = same_store(db, ref)
        rows.append(f"| {label} | {killed['wall']:.2f} | {fmt_s(killed.get('checkpoint'))} | {state} | "
                    f"{committed:,} ({committed / n:.0%}) | {hashed} | "
                    f"{resumed['wall']:.2f} | {total:.2f} | {total / wall:.2f} | {total - wall:.2f} | {equal} |")
        print(rows[-1], flush=True)
        shutil.rmtree(db)
    rows += ["", "`lost s` = killed + resumed wall time minus the uninterrupted wall time: the work the kill threw "
             "away plus the resumed run's own start (interpreter, imports, validation of the source, about the time "
             "to the first checkpoint). `equal`: `filtershift verify` passes and the weights (zarr), tables "
             "(pandas) and manifest (timestamps aside) equal the uninterrupted store's. One run on a shared, noisy "
             "machine: compare the ratios."]
    append_section(f"Resume after SIGKILL, {n:,} filters", "\n".join(rows))
    shutil.rmtree(ref)
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
