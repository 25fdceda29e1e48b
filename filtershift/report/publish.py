"""Where reports go: runs under ``OUT/runs/<UTC timestamp>-<spec hash>/``, an atomic switch of ``OUT/latest``,
one writer at a time, reuse of a run that already covers the same store snapshot and spec, and safe file names.

A run is built in ``OUT/.staging-<name>/`` and renamed into ``runs/`` only when complete, so a failed or killed run
never touches the published ones. ``latest`` is a relative symlink replaced with ``os.replace`` (atomic on POSIX);
``latest.txt`` holds the same run name for tools and file systems without symlinks.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from filtershift.errors import FiltershiftError, InputError

log = logging.getLogger("filtershift.report")

RUNS, FAILED, LATEST, LATEST_TXT, RUN_JSON = "runs", "failed", "latest", "latest.txt", "run.json"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".filtershift-report.lock"
KEEP_FAILED = 5


class ReportBusyError(FiltershiftError):
    """Another report is being built into the same output directory."""

    exit_code = 4


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name component for any label: ASCII letters, digits, '.', '_' and '-' only, never starting with a
    dot; a short hash keeps labels that clean to the same text apart."""
    raw = str(text)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")[:limit] or "group"
    if clean != raw:
        clean = f"{clean}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"
    return clean


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` after checking that it stays inside ``root`` (no '..', no absolute part)."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise InputError(f"output path {path} would leave the output directory {root}; refusing to write it.")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def prepare_output(out) -> Path:
    """Create the output directory (and its parents); errors name the path and the remedy."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUNS).mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the report output directory ({exc.strerror}); choose a writable "
                         "--out.") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"{out}: the report output directory is not writable; choose a writable --out.")
    return out.resolve()


@contextmanager
def exclusive(out: Path):
    """Hold ``OUT/.filtershift-report.lock`` (flock) for the duration; a second writer fails at once."""
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            other = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise ReportBusyError(f"{out}: another report is being built here (pid {other or 'unknown'}); wait for "
                                  "it to finish or use another --out.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def clean_staging(out: Path) -> list[str]:
    """Remove the staging directories of runs that were killed (called under the lock: none is active)."""
    removed = []
    for p in sorted(out.glob(STAGING_PREFIX + "*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
            log.warning("removed the unfinished run %s (killed before it completed)", p.name)
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    return removed


def run_name(spec_hash: str, now: _dt.datetime | None = None) -> str:
    """``<UTC timestamp>-<short spec hash>``, e.g. ``20250101T030000Z-1a2b3c4d``."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{spec_hash[:8]}"


def unique_run_name(out: Path, spec_hash: str) -> str:
    base = run_name(spec_hash)
    name, i = base, 1
    while (out / RUNS / name).exists():
        i += 1
        name = f"{base}.{i}"
    return name


def list_runs(out: Path) -> list[dict]:
    """The ``run.json`` of every published run, oldest first."""
    runs = []
    for p in sorted((out / RUNS).glob("*/" + RUN_JSON)):
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError):
            log.warning("ignoring run %s: unreadable %s", p.parent.name, RUN_JSON)
            continue
        if meta.get("status") == "complete" and meta.get("name") == p.parent.name:
            runs.append(meta)
    return runs


def latest(out: Path) -> str | None:
    """The name of the run ``latest`` points to, if any."""
    link = out / LATEST
    if link.is_symlink():
        return Path(os.readlink(link)).name
    txt = out / LATEST_TXT
    if not txt.is_file():
        return None
    return txt.read_text().strip() or None


def find_run(out: Path, identity: dict) -> str | None:
    """The newest published run made from the same store snapshot, spec and filtershift version."""
    match = [r["name"] for r in list_runs(out) if r.get("identity") == identity]
    return match[-1] if match else None


def point_latest(out: Path, name: str) -> None:
    """Switch ``latest`` (symlink) and ``latest.txt`` to run ``name`` atomically."""
    tmp = out / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{RUNS}/{name}", tmp)
    os.replace(tmp, out / LATEST)
    write_text_atomic(out / LATEST_TXT, name + "\n")


def promote(out: Path, staging: Path, name: str) -> Path:
    """Move a complete staging directory to ``runs/<name>`` (one rename) and point ``latest`` at it."""
    final = inside(out, RUNS, name)
    os.rename(staging, final)
    point_latest(out, name)
    return final


def discard(out: Path, staging: Path, name: str) -> Path | None:
    """Keep a failed run's directory (with its run.log) under ``failed/``; only the last few are kept."""
    if not staging.exists():
        return None
    (out / FAILED).mkdir(exist_ok=True)
    dest = inside(out, FAILED, name)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(staging, dest)
    for old in sorted((out / FAILED).iterdir())[:-KEEP_FAILED]:
        shutil.rmtree(old, ignore_errors=True)
    return dest
