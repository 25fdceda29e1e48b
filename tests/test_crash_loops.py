"""Crash loops: each writer is SIGKILLed at >= 20 points spread over its run, and after every kill the store or the
report is checked against an uninterrupted run.

- ``filtershift convert`` (a subprocess on a 1.5e6-filter source, 92 chunks): kills spread over the chunk copy (by
  polling the progress file), before the first chunk and during validation/commit; then ``convert(resume=True)``
  (which starts afresh when the kill came before the store existed) must give weights chunk files, tables and
  manifest byte-identical to an uninterrupted conversion.
- appends (a subprocess adding six models with ``add_models``): kills at delays spread uniformly over the append
  (from the moment the writer lock appears to the calibrated end); after each kill the store opens at a committed
  snapshot equal, weights and tables, to the same version of an uninterrupted store; re-running the append
  completes it to a store identical to the uninterrupted one (provenance times aside).
- ``filtershift report`` (a subprocess): kills at delays spread uniformly over a calibrated run; after each kill the
  files under ``latest/`` are byte-identical to the last published run, the published runs are unchanged, and the
  next run cleans up and publishes.

By default each loop kills at fewer points that still reach every phase of its writer (convert: before the first
chunk, early, middle and late in the copy, validation and commit; appends and report: spread over the whole run), so
the default suite stays short. ``FILTERSHIFT_CRASH_POINTS=all`` runs the dense sweep above (>= 20 kills per writer);
pytest's header says which one runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _tiers
import numpy as np
import pytest
import yaml
import zarr
from test_append import fake_model

import filtershift as fs
from filtershift.errors import IncompleteStoreError, StoreError
from filtershift.report import build_report
from filtershift.store.append import add_models, create_empty
from filtershift.store.convert import convert
from filtershift.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "FILTERSHIFT_PROGRESS": "0", "OPENBLAS_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])}
#: the dense sweep (>= 20 kills per writer) at the suite's full depth (tests/_tiers.py); else fewer kills covering
#: every phase.
DENSE = _tiers.FULL
N_KILLS = 20 if DENSE else 8
TEMP_SUFFIXES = (".partial", ".tmp")
pytestmark = pytest.mark.extended


def digest(root: Path, *subdirs: str) -> dict:
    """sha256 of every file under ``root/subdir`` (temporary files of interrupted writes left out)."""
    out = {}
    for sub in subdirs or ("",):
        base = root / sub
        for p in sorted(base.rglob("*")):
            if p.is_file() and not p.name.endswith(TEMP_SUFFIXES):
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIXES))


def manifest(db: Path) -> dict:
    m = json.loads((db / "zarr.json").read_text())["attributes"]["filtershift"]
    for entry in m["provenance"]:
        entry.pop("time", None)
    return m


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc``; True if it was still running (the kill interrupted it)."""
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return running


# -- convert ---------------------------------------------------------------------------------------------------------

CHUNK = 16_384


@pytest.fixture(scope="module")
def convert_source(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    src = synthesize(d / "src.h5", n_filters=1_500_000, n_models=20, seed=3)
    ref = d / "ref.zarr"
    convert(src, ref, chunk_filters=CHUNK)
    return src, ref


def _convert_kill_plan(n_chunks: int) -> list[tuple[str, float]]:
    """(phase, target): 'start' kills as soon as the store's zarr.json exists, 'copy' once the progress file records
    ``target`` chunks, 'after' ``target`` seconds after the last chunk is recorded (validation and commit)."""
    copy = np.unique(np.linspace(1, n_chunks - 1, 16 if DENSE else 4).round().astype(int))
    after = (0.0, 0.05, 0.15, 0.3, 0.6) if DENSE else (0.0, 0.3)
    return [("start", 0)] + [("copy", int(c)) for c in copy] + [("after", s) for s in after]


def test_convert_killed_at_spread_points_resumes_to_identical_store(convert_source, tmp_path):
    src, ref = convert_source
    n = zarr.open_group(str(ref), mode="r").attrs["filtershift"]["n_filters"]
    n_chunks = -(-n // CHUNK)
    want_files = digest(ref, "weights", "tables")
    want_manifest = manifest(ref)
    plan = _convert_kill_plan(n_chunks)
    assert len(plan) >= (N_KILLS if DENSE else 7)
    assert {phase for phase, _ in plan} == {"start", "copy", "after"}
    states, chunks_at_kill, junk, stuck = [], [], {}, []
    for i, (phase, target) in enumerate(plan):
        db = tmp_path / f"db{i}.zarr"
        progress_file = db / ".filtershift-progress.json"
        proc = subprocess.Popen([sys.executable, "-m", "filtershift.cli", "convert", str(src), str(db),
                                 "--chunk-filters", str(CHUNK)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        done = -1
        while proc.poll() is None and time.monotonic() < deadline:
            if phase == "start" and (db / "zarr.json").exists():
                break
            try:
                done = json.loads(progress_file.read_text())["done"]
            except (OSError, ValueError, KeyError):
                pass
            if phase == "copy" and done >= target:
                break
            if phase == "after" and done >= n_chunks:
                time.sleep(target)
                break
            time.sleep(0.002)
        interrupted = kill(proc)
        chunks_at_kill.append(done)
        if not (db / "zarr.json").exists():  # killed before the destination existed: --resume starts afresh
            states.append("no store")
            convert(src, db, chunk_filters=CHUNK, resume=True)
        elif "filtershift" not in json.loads((db / "zarr.json").read_text()).get("attributes", {}):
            # killed between creating the Zarr group and writing the manifest: every remedy the messages offer
            # (--resume, a plain convert, --overwrite) should finish or restart the conversion
            states.append("group without manifest")
            refusals = []
            for kw in ({"resume": True}, {}, {"overwrite": True}):
                try:
                    convert(src, db, chunk_filters=CHUNK, **kw)
                    break
                except StoreError as exc:
                    refusals.append(f"{kw or 'plain'}: {exc}")
            else:
                stuck.append((i, phase, target, refusals))
                shutil.rmtree(db)
                convert(src, db, chunk_filters=CHUNK)
        else:
            state = zarr.open_group(str(db), mode="r").attrs["filtershift"]["state"]
            states.append(state if interrupted else "finished")
            if state != "complete":
                with pytest.raises(IncompleteStoreError, match="--resume"):
                    fs.open_store(db)
            convert(src, db, chunk_filters=CHUNK, resume=True)
        junk[i] = leftovers(db)
        assert digest(db, "weights", "tables") == want_files, f"kill {i} ({phase} {target}, {done} chunks)"
        assert manifest(db) == want_manifest
        assert not progress_file.exists()
        assert fs.verify(db).ok
        shutil.rmtree(db)
    print("convert kills:", list(zip(plan, chunks_at_kill, states)))
    print("temporary files left in the resumed stores:", {k: v for k, v in junk.items() if v})
    assert not stuck, f"a kill left a destination that no command but rm -r recovers: {stuck}"
    n_copy = sum(1 for p, _ in plan if p == "copy")
    mid_copy = sum(1 for (p, _), s in zip(plan, states) if p == "copy" and s == "converting")
    assert mid_copy >= n_copy - (4 if DENSE else 1), (plan, states)
    assert sum(s == "converting" for s in states) >= len(plan) - (6 if DENSE else 3), (plan, states)


# -- appends ---------------------------------------------------------------------------------------------------------

APPEND_CHUNK = 1000
N_MODELS = 6
APPENDER = """
from test_append import fake_model
from filtershift.store.append import add_models
add_models({db!r}, [fake_model(200 + s, layers=((32, 16), (32, 32))) for s in range({n})])
"""


def _models():
    return [fake_model(200 + s, layers=((32, 16), (32, 32))) for s in range(N_MODELS)]


def _start_appender(db: Path) -> tuple[subprocess.Popen, float | None]:
    """Start the appending subprocess; returns it and the time its writer lock appeared (None: it never did)."""
    proc = subprocess.Popen([sys.executable, "-c", APPENDER.format(db=str(db), n=N_MODELS)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = db / ".filtershift-lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if lock.exists():
            return proc, time.monotonic()
        time.sleep(0.001)
    return proc, None


def test_append_killed_at_spread_points_keeps_a_snapshot_and_rerun_completes(tmp_path):
    ref = tmp_path / "ref.zarr"
    create_empty(ref, chunk_filters=APPEND_CHUNK)
    ref_tables = {1: digest(ref, "tables/v1")}          # each version's tables (a commit keeps the last two)
    for model in _models():
        add_models(ref, [model])
        v = manifest(ref)["version"]
        ref_tables[v] = digest(ref, f"tables/v{v}")
    want_files = digest(ref, "weights", "tables")
    want_manifest = manifest(ref)
    ref_weights = zarr.open_group(str(ref), mode="r")["weights"][:]
    sizes = [m.filters().shape[0] for m in _models()]
    snapshots = {int(v): 1 + k for k, v in enumerate(np.concatenate([[0], np.cumsum(sizes)]))}  # n -> version

    # calibration: how long the append runs once it holds the lock
    db = tmp_path / "calib.zarr"
    create_empty(db, chunk_filters=APPEND_CHUNK)
    proc, t_lock = _start_appender(db)
    assert t_lock is not None, proc.stderr.read().decode()[-2000:]
    while (db / ".filtershift-lock").exists() and proc.poll() is None:  # released after the last commit
        time.sleep(0.001)
    span = time.monotonic() - t_lock
    proc.wait(120)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    assert digest(db, "weights", "tables") == want_files

    seen = []
    for k in range(N_KILLS + 2):
        db = tmp_path / f"db{k}.zarr"
        create_empty(db, chunk_filters=APPEND_CHUNK)
        proc, t_lock = _start_appender(db)
        assert t_lock is not None, proc.stderr.read().decode()[-2000:]
        delay = span * (k + 0.5) / (N_KILLS + 2)
        time.sleep(max(0.0, t_lock + delay - time.monotonic()))
        interrupted = kill(proc)
        proc.stderr.close()
        # a reader opens the last committed snapshot, equal to the same version of the uninterrupted store
        ds = fs.open_store(db)
        n = ds.sizes["filter"]
        version = zarr.open_group(str(db), mode="r").attrs["filtershift"]["version"]
        assert snapshots.get(n) == version, f"kill {k}: {n} filters in version {version} is not a snapshot"
        np.testing.assert_array_equal(ds["weights"].values, ref_weights[:n])
        assert digest(db, f"tables/v{version}") == ref_tables[version], version
        assert int(fs.records(ds).n.sum()) == n
        assert fs.verify(db).ok
        seen.append((round(delay, 3), interrupted, version))
        # re-running the same append (the dead writer's lock is taken over) completes it
        add_models(db, _models())
        assert digest(db, "weights", "tables") == want_files, f"kill {k} at {delay:.3f} s"
        assert manifest(db) == want_manifest
        assert not (db / ".filtershift-lock").exists()
        shutil.rmtree(db)
    print("append kills (delay after lock, interrupted, committed version):", seen)
    versions = [v for _, interrupted, v in seen if interrupted]
    assert len(versions) >= N_KILLS - 2
    # the kills landed during most of the six models (the default's 10 kills: at least four of them)
    assert len(set(versions)) >= (N_MODELS - 1 if DENSE else N_MODELS - 2), seen


# -- report ----------------------------------------------------------------------------------------------------------

SPEC = {"groupings": ["task", "depth"], "metrics": ["kl_sym", "js"], "bootstrap": {"n_boot": 5, "seed": 1},
        "figures": {"formats": ["png"], "density_bins": 32, "dpi": 40}}


def _report_cmd(store: Path, out: Path, cfg: Path) -> list[str]:
    return [sys.executable, "-m", "filtershift.cli", "report", str(store), "--out", str(out), "--config", str(cfg),
            "--scheduler", "threads", "--force", "-q"]


def _latest_files(out: Path) -> tuple[str, dict]:
    target = os.readlink(out / "latest")
    return target, digest(out / "latest")


def test_report_killed_at_spread_points_keeps_the_last_report(tmp_path):
    store = synthesize(tmp_path / "db.zarr", n_filters=20_000, n_models=12, seed=1, format="zarr")
    out = tmp_path / "out"
    cfg = tmp_path / "report.yaml"
    cfg.write_text(yaml.safe_dump(SPEC))
    first = build_report(store, out, cfg, scheduler="threads")
    assert first.status == "built"
    # calibration: one uninterrupted run of the command (it becomes the last good report)
    t0 = time.monotonic()
    subprocess.run(_report_cmd(store, out, cfg), env=ENV, check=True, capture_output=True, timeout=300)
    span = time.monotonic() - t0
    good_target, good_files = _latest_files(out)
    assert good_target != f"runs/{first.run}" and (out / good_target / "run.json").is_file()
    published = digest(out, "runs")
    outcomes = []
    for k in range(N_KILLS):
        delay = span * (k + 0.5) / N_KILLS
        proc = subprocess.Popen(_report_cmd(store, out, cfg), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        interrupted = kill(proc)
        target, files = _latest_files(out)
        assert (out / "latest.txt").read_text().strip() in (Path(target).name, Path(good_target).name)
        now = digest(out, "runs")
        # published runs are never touched; a new one may only have appeared whole
        assert {p: h for p, h in now.items() if p in published} == published, f"kill {k} at {delay:.2f} s"
        if target == good_target:
            assert files == good_files, f"kill {k} at {delay:.2f} s: latest/ changed"
            outcomes.append((round(delay, 2), interrupted, "previous"))
        else:  # killed after the switch: the new latest run is complete
            run = json.loads((out / target / "run.json").read_text())
            assert run["status"] == "complete" and run["name"] == Path(target).name
            assert (out / target / "index.html").is_file()
            json.loads((out / target / "results.json").read_text())
            good_target, good_files = target, files
            outcomes.append((round(delay, 2), interrupted, "new"))
        published = now
    print("report kills (delay, interrupted, latest):", outcomes)
    assert sum(1 for _, interrupted, which in outcomes if interrupted and which == "previous") >= N_KILLS - 4
    final = build_report(store, out, cfg, scheduler="threads", force=True)
    assert final.status == "built" and os.readlink(out / "latest") == f"runs/{final.run}"
    assert not list(out.glob(".staging-*"))
    assert good_files == digest(out / good_target)
