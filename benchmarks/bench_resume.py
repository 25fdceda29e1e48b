"""Resume benchmark: how much work a SIGKILL of ``filtershift convert`` loses, at several points of a run.

    python benchmarks/bench_resume.py --filters 10000000 --models 200 [--workdir DIR]
        [--points 0.2s,1s,checkpoint,25%,50%,90%,end]

One uninterrupted ``filtershift convert SRC REF.zarr`` is timed first (wall time, and when its destination, first
progress record and first chunk appear). Then, for each point, ``filtershift convert SRC DB.zarr --resume`` is
started (the form a scheduled job always uses), killed with SIGKILL at that point, and run again with ``--resume``
to the end. Points are seconds after the start (``0.2s``), the first checkpoint (``checkpoint``), a share of the
chunks recorded in the progress file (``25%``; on a shared machine a share of the uninterrupted wall time lands
anywhere) or every chunk recorded (``end``: validation and commit). Reported per point: when the killed run wrote
its first checkpoint, the rows committed at the kill, when the resumed run committed its first new chunk (its
restart cost), the killed + resumed wall time against the uninterrupted one (the excess is the work lost), and
whether the resumed store equals the uninterrupted one (``filtershift verify``, the weights read with zarr, the
tables with pandas, the manifest but for timestamps).
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
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_section

from filtershift.store.format import Location, read_table

PROGRESS = ".filtershift-progress.json"
POLL_S = 0.005


def filtershift(*args: str) -> list[str]:
    return [sys.executable, "-m", "filtershift.cli", *args]


def read_progress(db: Path) -> dict | None:
    try:
        return json.loads((db / PROGRESS).read_text())
    except (OSError, ValueError):
        return None


def watch(cmd: list[str], db: Path, kill_when=None) -> dict:
    """Run ``cmd``, polling ``db``; SIGKILL it as soon as ``kill_when(seconds, chunks_done)`` is true (None: let it
    finish). Returns the wall time, when the destination, the first progress record and the first new chunk
    appeared, and the progress record at the end."""
    seen: dict = {}
    start_done = (read_progress(db) or {}).get("done", 0)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        t = time.perf_counter() - t0
        saved = read_progress(db)
        done = (saved or {}).get("done", 0)
        if "dst" not in seen and (db / "zarr.json").exists():
            seen["dst"] = t
        if "checkpoint" not in seen and saved is not None:
            seen["checkpoint"] = t
        if "new_chunk" not in seen and done > start_done:
            seen["new_chunk"] = t
        if kill_when is not None and kill_when(t, saved):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(POLL_S)
    _, err = proc.communicate()
    seen["wall"] = time.perf_counter() - t0
    seen["returncode"] = proc.returncode
    if kill_when is None and proc.returncode != 0:
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
        if not read_table(Location.of(db), name, v).equals(read_table(Location.of(ref), name, v)):
            return f"{name} table differs"
    return "yes"


def kill_rule(text: str, n_chunks: int):
    """``0.2s``: seconds after the start; ``checkpoint``: as soon as the first progress record exists; ``25%``: once
    that share of the chunks is recorded; ``end``: once every chunk is (validation and commit are running)."""
    if text.endswith("s"):
        return lambda t, saved: t >= float(text[:-1])
    if text == "checkpoint":
        return lambda t, saved: saved is not None
    target = n_chunks if text == "end" else max(1, round(float(text.rstrip("%")) / 100 * n_chunks))
    return lambda t, saved: (saved or {}).get("done", 0) >= target


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=int, default=10_000_000)
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--workdir", default=None, help="keeps the source between runs when given")
    ap.add_argument("--points", default="0.2s,1s,checkpoint,25%,50%,90%,end",
                    help="kill points: seconds after the start (0.2s), checkpoint, a share of the chunks (25%%), end")
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
          f"{fmt_s(base.get('checkpoint'))} s, first chunk at {fmt_s(base.get('new_chunk'))} s", flush=True)
    rows = [f"Source: `filtershift synth` with {n:,} filters, {args.models} models ({n_chunks} chunks of {chunk:,}). "
            f"Uninterrupted `filtershift convert`: {wall:.2f} s wall; its destination and first checkpoint "
            f"(progress file) appeared at {fmt_s(base.get('checkpoint'))} s ({base.get('checkpoint', 0) / wall:.0%} "
            "of the run: interpreter start, imports, validation of the source in a child process), its first "
            f"chunk at {fmt_s(base.get('new_chunk'))} s.",
            "",
            "| kill at | killed after s | its first checkpoint s | state at kill | rows committed at kill | "
            "hash recorded | resume s | resume's first new chunk s | killed + resumed s | / uninterrupted | "
            "lost s | equal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for text in args.points.split(","):
        label = text.strip()
        db = work / "db.zarr"
        shutil.rmtree(db, ignore_errors=True)
        killed = watch(filtershift("convert", str(src), str(db), "--resume"), db, kill_rule(label, n_chunks))
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
                    f"{committed:,} ({committed / n:.0%}) | {hashed} | {resumed['wall']:.2f} | "
                    f"{fmt_s(resumed.get('new_chunk'))} | {total:.2f} | {total / wall:.2f} | {total - wall:.2f} | "
                    f"{equal} |")
        print(rows[-1], flush=True)
        shutil.rmtree(db)
    rows += ["", "`lost s` = killed + resumed wall time minus the uninterrupted wall time: the work the kill threw "
             "away plus the resumed run's own start (interpreter, imports, validation of the source: about the "
             "time to the first checkpoint, or to the resume's first new chunk). `equal`: `filtershift verify` "
             "passes and the weights (zarr), tables (pandas) and manifest (timestamps aside) equal the "
             "uninterrupted store's. One run on a shared, noisy machine: compare the ratios."]
    append_section(f"Resume after SIGKILL, {n:,} filters", "\n".join(rows))
    shutil.rmtree(ref)
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
