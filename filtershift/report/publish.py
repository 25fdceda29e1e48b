"""Where reports go: runs under ``OUT/runs/<UTC timestamp>-<spec hash>/``, an atomic switch of ``OUT/latest``,
one writer at a time, reuse of a run that already covers the same store snapshot and spec, and safe file names.

A run is built in ``OUT/.staging-<name>/`` and renamed into ``runs/`` only when complete, so a failed or killed run
never touches the published ones. ``latest`` is a relative symlink replaced with ``os.replace`` (atomic on POSIX);
``latest.txt`` holds the same run name for tools and file systems without symlinks.

An output URL (``s3://``, ``gs://``, ``memory://``, ...) has neither renames nor symlinks: :class:`RemoteOutput`
uploads the run with ``run.json`` last and publishes it by single-object PUTs of the pointers; :func:`open_output`
picks the implementation. docs/report.md, "On object storage", states the guarantees.
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


# -- where a run is published: a local directory or an object-store URL -----------------------------------------


class LocalOutput:
    """A report output directory on a local (or mounted) file system: staging rename, symlink, flock."""

    remote = False

    def __init__(self, out):
        self.root = self.location = prepare_output(out)
        self.display = str(self.root)

    def run_dir(self, name: str) -> Path:
        return self.root / RUNS / name

    def file(self, name: str) -> Path:
        return self.root / name

    def exclusive(self):
        return exclusive(self.root)

    def clean(self) -> list[str]:
        return clean_staging(self.root)

    def list_runs(self) -> list[dict]:
        return list_runs(self.root)

    def latest(self) -> str | None:
        return latest(self.root)

    def find_run(self, identity: dict) -> str | None:
        return find_run(self.root, identity)

    def point_latest(self, name: str) -> None:
        point_latest(self.root, name)

    def unique_name(self, spec_hash: str) -> str:
        return unique_run_name(self.root, spec_hash)

    def staging(self, name: str) -> Path:
        path = inside(self.root, STAGING_PREFIX + name)
        path.mkdir()
        return path

    def promote(self, staging: Path, name: str) -> Path:
        return promote(self.root, staging, name)

    def discard(self, staging: Path, name: str) -> Path | None:
        return discard(self.root, staging, name)

    def write_index(self, text: str) -> None:
        write_text_atomic(self.root / "index.html", text)


LATEST_JSON = "latest.json"
REDIRECT = ('<!doctype html>\n<html><head><meta charset="utf-8"><title>latest filtershift report</title>\n'
            '<meta http-equiv="refresh" content="0; url=../{runs}/{name}/index.html"></head>\n'
            '<body><p>Latest report: <a href="../{runs}/{name}/index.html">{name}</a></p></body></html>\n')


class RemoteOutput:
    """A report output at an fsspec URL (``s3://``, ``gs://``, ``memory://``, ...), where there are no renames or
    symlinks (see docs/report.md, "On object storage").

    A run is built in a local temporary directory exactly as on disk, then every file is uploaded under
    ``runs/<name>/`` with ``run.json`` last: a run without ``run.json`` is invisible (to reuse, the history and
    ``latest``). Then ``latest.json``, ``latest.txt``, ``latest/index.html`` (a redirect) and the history
    ``index.html`` are each replaced by one PUT, which object stores make visible at once. The lock is an object
    created only if absent (a conditional PUT); where the store cannot do that it is advisory.
    """

    remote = True

    def __init__(self, url: str, storage_options: dict | None = None):
        from filtershift import outputs

        self.url = self.location = outputs.check(url, "--out").rstrip("/")
        self.display = outputs.display(self.url)
        self.fs, self.path = outputs.filesystem(self.url, storage_options)
        self.path = self.path.rstrip("/")
        self._tmp: str | None = None

    def _failures(self, action: str):
        from filtershift import outputs

        return outputs.failures(self.url, action, "--out")

    def _key(self, *parts: str) -> str:
        return "/".join([self.path, *parts])

    def run_dir(self, name: str) -> str:
        return f"{self.url}/{RUNS}/{name}"

    def file(self, name: str) -> str:
        return f"{self.url}/{name}"

    def _put(self, data: bytes, *parts: str, mode: str = "overwrite") -> None:
        from filtershift import outputs

        outputs.put_object(self.fs, self._key(*parts), data, mode=mode)

    @contextmanager
    def exclusive(self):
        """Hold ``OUT/.filtershift-report.lock``: an object created only if absent, deleted at the end. A lock left
        by a killed run stays until it is deleted (the error says so)."""
        import socket

        from filtershift.store.format import utc_now

        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": utc_now()}
        with self._failures("write"):
            try:
                self._put(json.dumps(owner).encode(), LOCK_FILE, mode="create")
            except FileExistsError:
                try:
                    other = json.loads(self.fs.cat_file(self._key(LOCK_FILE)))
                except (OSError, ValueError):
                    other = {}
                raise ReportBusyError(
                    f"{self.display}: another report is being built here (lock {self.file(LOCK_FILE)}: host "
                    f"{other.get('host', '?')}, pid {other.get('pid', '?')}, since {other.get('started', '?')}); "
                    "wait for it to finish or use another --out. If that report was killed, delete the lock "
                    "object.") from None
            except (TypeError, NotImplementedError):
                log.warning("%s: this store cannot create an object only if absent; the report lock is advisory "
                            "(run one report at a time on this output)", self.display)
                if self.fs.exists(self._key(LOCK_FILE)):
                    raise ReportBusyError(f"{self.display}: another report is being built here (lock "
                                          f"{self.file(LOCK_FILE)}); wait for it or delete the lock if it was "
                                          "killed.") from None
                self._put(json.dumps(owner).encode(), LOCK_FILE)
        try:
            yield
        finally:
            try:
                self.fs.rm_file(self._key(LOCK_FILE))
            except Exception as exc:  # noqa: BLE001 - a failed unlock must not hide the report's own outcome
                log.error("%s: could not delete the report lock (%s); delete %s before the next report",
                          self.display, exc, self.file(LOCK_FILE))

    def clean(self) -> list[str]:
        """Delete the uploads of runs killed before their ``run.json`` (under the lock: none is active)."""
        removed = []
        with self._failures("list"):
            try:
                entries = self.fs.ls(self._key(RUNS), detail=False)
            except FileNotFoundError:
                return removed
            done = {p.rstrip("/").split("/")[-2] for p in self.fs.glob(self._key(RUNS, "*", RUN_JSON))}
            for entry in entries:
                name = entry.rstrip("/").split("/")[-1]
                if name not in done:
                    self.fs.rm(entry, recursive=True)
                    removed.append(name)
                    log.warning("removed the unfinished upload of run %s (killed before it completed)", name)
        return removed

    def list_runs(self) -> list[dict]:
        """The ``run.json`` of every published run, oldest first."""
        with self._failures("list"):
            paths = sorted(self.fs.glob(self._key(RUNS, "*", RUN_JSON)))
            blobs = self.fs.cat(paths) if paths else {}
        runs = []
        for path in paths:
            name = path.rstrip("/").split("/")[-2]
            try:
                meta = json.loads(blobs[path])
            except (KeyError, ValueError):
                log.warning("ignoring run %s: unreadable %s", name, RUN_JSON)
                continue
            if meta.get("status") == "complete" and meta.get("name") == name:
                runs.append(meta)
        return runs

    def latest(self) -> str | None:
        with self._failures("read"):
            try:
                return self.fs.cat_file(self._key(LATEST_TXT)).decode().strip() or None
            except FileNotFoundError:
                return None

    def find_run(self, identity: dict) -> str | None:
        match = [r["name"] for r in self.list_runs() if r.get("identity") == identity]
        return match[-1] if match else None

    def point_latest(self, name: str) -> None:
        """Publish run ``name``: ``latest.json``, ``latest.txt`` and ``latest/index.html``, one PUT each."""
        from filtershift.store.format import utc_now

        pointer = {"run": name, "path": f"{RUNS}/{name}/", "index": f"{RUNS}/{name}/index.html",
                   "published": utc_now()}
        with self._failures("write"):
            self._put((json.dumps(pointer, indent=1) + "\n").encode(), LATEST_JSON)
            self._put((name + "\n").encode(), LATEST_TXT)
            self._put(REDIRECT.format(runs=RUNS, name=name).encode(), LATEST, "index.html")

    def unique_name(self, spec_hash: str) -> str:
        base = run_name(spec_hash)
        name, i = base, 1
        with self._failures("list"):
            while self.fs.exists(self._key(RUNS, name)):
                i += 1
                name = f"{base}.{i}"
        return name

    def staging(self, name: str) -> Path:
        """A local directory to build the run in (removed after the upload)."""
        import tempfile

        self._tmp = tempfile.mkdtemp(prefix="filtershift-report-")
        path = Path(self._tmp) / name
        path.mkdir()
        return path

    def _upload(self, staging: Path, *prefix: str) -> None:
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == RUN_JSON)
        for p in files:
            self._put(p.read_bytes(), *prefix, *p.relative_to(staging).parts)

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def promote(self, staging: Path, name: str) -> str:
        """Upload the run under ``runs/<name>/`` (``run.json`` last), then point ``latest`` at it."""
        with self._failures("write"):
            self._upload(staging, RUNS, name)
        self._drop_tmp()
        self.point_latest(name)
        return self.run_dir(name)

    def discard(self, staging: Path, name: str) -> str | None:
        """Upload a failed run's files (with its run.log) under ``failed/<name>/``; only the last few are kept.
        Best effort: an upload failure is logged, the original error is what the user sees."""
        if not staging.exists():
            self._drop_tmp()
            return None
        try:
            with self._failures("write"):
                self._upload(staging, FAILED, name)
                kept = sorted(self.fs.ls(self._key(FAILED), detail=False))
                for old in kept[:-KEEP_FAILED]:
                    self.fs.rm(old, recursive=True)
        except FiltershiftError as exc:
            log.error("could not keep the failed run's files: %s", exc)
            return None
        finally:
            self._drop_tmp()
        return f"{self.url}/{FAILED}/{name}"

    def write_index(self, text: str) -> None:
        with self._failures("write"):
            self._put(text.encode("utf-8"), "index.html")


def open_output(out, storage_options: dict | None = None) -> LocalOutput | RemoteOutput:
    """The report output at ``out``: a URL (other than ``file://``) is published on object storage, anything else
    in a local directory; paths with a component named after a URL scheme (``s3:``) are refused."""
    from filtershift import outputs

    checked = outputs.check(out, "--out")
    return RemoteOutput(checked, storage_options) if outputs.is_url(checked) else LocalOutput(checked)
