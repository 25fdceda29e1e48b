"""The fault matrix of docs/reliability.md: every store fault, on a local store and on S3 (moto on 127.0.0.1),
on the threaded scheduler and on a two-worker process cluster, for each of pca, drift, quality, report and
compare, run through the command line as a user runs it.

Expected everywhere: a non-zero exit code, one ``filtershift CMD: error: ...`` line naming the fault, no
traceback, and no report run published. The same commands on the undamaged store exit 0 with the numbers of the
local threaded run, so a failure here is the fault's doing. One small store (five chunks) serves the whole matrix.
At the extended depth each fault case runs two of the five commands, rotating so that all five meet every fault
and every location x scheduler; ``FILTERSHIFT_TESTS=full`` runs all five everywhere. The quick default depth leaves
out S3 x cluster (its two halves are met by the other places) and runs one command per case (tests/_tiers.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import _tiers
import numpy as np
import pytest
from _s3 import moto_s3

from filtershift.cli import main
from filtershift.cluster import start_local_processes
from filtershift.store.convert import convert
from filtershift.synth import synthesize

CHUNK = 4096
N_FILTERS = 5 * CHUNK - 700          # five chunks, the last one partial
COMMANDS = ("pca", "drift", "quality", "report", "compare")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("aws")) as server:
        yield server


@pytest.fixture(scope="module")
def clean(tmp_path_factory, s3):
    """The undamaged store: a local directory and the same bytes under an S3 prefix, plus a model for compare."""
    root = tmp_path_factory.mktemp("matrix")
    src = synthesize(root / "src.h5", n_filters=N_FILTERS, n_models=6, seed=3)
    local = root / "clean.zarr"
    convert(src, str(local), chunk_filters=CHUNK)
    model = root / "model.safetensors"
    from safetensors.numpy import save_file

    rng = np.random.default_rng(5)
    save_file({"conv1.weight": rng.normal(size=(16, 8, 3, 3)).astype(np.float32),
               "conv2.weight": rng.normal(size=(16, 16, 3, 3)).astype(np.float32) * 0.1}, str(model))
    return local, model


@pytest.fixture(scope="module")
def cluster(local_cluster):
    """Two worker processes that see the file system as this process does, with the S3 server's credentials (the
    session's cluster, tests/_cluster_fixtures.py)."""
    return local_cluster


@pytest.fixture(scope="module")
def blind_cluster(tmp_path_factory):
    """Two worker processes in a mount namespace where the test's store directory is an empty tmpfs: a worker on
    another host without the shared file system, as seen from the store's point of view."""
    hidden = tmp_path_factory.mktemp("hidden")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.fail(f"mount namespaces are needed for the blind-worker case: {probe.stderr.decode()}")
    procs = start_local_processes(2, nthreads=1, memory_limit="1GB", idle_timeout="600s",
                                  wrap=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                        f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"'])
    try:
        yield procs.address, hidden
    finally:
        procs.stop()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def argv_of(command: str, store: str, model, out_dir, scheduler: str) -> list[str]:
    return {"pca": ["pca", store, "--json"],
            "drift": ["drift", store, "--by", "task", "--json"],
            "quality": ["quality", store, "--json"],
            "report": ["report", store, "--out", str(out_dir), "--json", "-q"],
            "compare": ["compare", str(model), "--store", store, "--json"]}[command] + ["--scheduler", scheduler]


# ----------------------------------------------------------------------------------------------------------- faults
def _chunk(root: str, i: int) -> str:
    return f"{root}/weights/c/{i}/0"


def _edit_manifest(fs, root: str, change) -> None:
    meta = json.loads(fs.cat(f"{root}/zarr.json"))
    change(meta["attributes"]["filtershift"])
    fs.pipe(f"{root}/zarr.json", json.dumps(meta).encode())


def _flip(fs, root):
    data = bytearray(fs.cat(_chunk(root, 1)))
    data[len(data) // 2] ^= 0x40
    fs.pipe(_chunk(root, 1), bytes(data))


#: fault -> (damage(fs, root), the words its error line must hold, where it applies)
FAULTS = {
    "deleted chunk": (lambda fs, root: fs.rm(_chunk(root, 1)), ("chunk 1", "missing")),
    "truncated chunk": (lambda fs, root: fs.pipe(_chunk(root, 1), fs.cat(_chunk(root, 1))[:5000]), ("chunk 1",)),
    "zero-length chunk": (lambda fs, root: fs.pipe(_chunk(root, 1), b""), ("chunk 1",)),
    "flipped byte": (_flip, ("chunk 1", "checksum")),
    "swapped chunk": (lambda fs, root: fs.pipe(_chunk(root, 1), fs.cat(_chunk(root, 2))), ("chunk 1", "sum")),
    "manifest past the array": (lambda fs, root: _edit_manifest(
        fs, root, lambda m: m.update(n_filters=m["n_filters"] + 3 * CHUNK)), ("manifest", "shape")),
    "tables of another version": (lambda fs, root: _edit_manifest(
        fs, root, lambda m: m.update(version=m["version"] + 1)), ("tables/v2/records",)),
}
CASES = [(f, loc, sch) for f in FAULTS for loc in ("local", "s3") for sch in ("threads", "cluster")]


def _extended_on_s3_cluster(cases):
    """``cases`` as pytest parameters, the S3 x cluster ones marked ``extended`` (tests/_tiers.py)."""
    return [pytest.param(*case, marks=pytest.mark.extended) if case[-2:] in {("s3", "cluster"), ("cluster", "s3")}
            else case for case in cases]


def commands_of(case_index: int, tier: str = _tiers.TIER) -> tuple[str, ...]:
    """The commands a case runs (tests/_tiers.py): all five at the full depth; at the extended depth two, rotating
    so that the four cases of a fault run all five commands between them and every command meets every location x
    scheduler (case i runs commands 2i and 2i + 1, modulo five); at the quick depth one, command i modulo five. A
    test of fewer cases takes the commands of cases 0 and 1 (``report``, the one that opens the store again, among
    them)."""
    if tier == "full":
        return COMMANDS
    if tier == "quick":
        return (COMMANDS[case_index % 5],)
    return COMMANDS[(2 * case_index) % 5], COMMANDS[(2 * case_index + 1) % 5]


class Places:
    """Copies of the clean store, local or under the S3 bucket, one per name."""

    def __init__(self, clean_dir, work, s3):
        self.clean, self.work, self.s3 = clean_dir, work, s3

    def put(self, location: str, name: str, parent=None) -> tuple[str, object, str]:
        """Copy the clean store to ``name``; return (what the user types, a file system, its root there)."""
        slug = name.replace(" ", "-")
        if location == "local":
            import fsspec

            target = (parent or self.work) / f"{slug}.zarr"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(self.clean, target)
            return str(target), fsspec.filesystem("file"), str(target)
        fs = self.s3.fs()
        root = f"{self.s3.bucket}/{slug}.zarr"
        if fs.exists(root):
            fs.rm(root, recursive=True)
        fs.put(str(self.clean) + "/", root, recursive=True)
        return f"s3://{root}", fs, root


@pytest.fixture(scope="module")
def places(clean, s3, tmp_path_factory):
    return Places(clean[0], tmp_path_factory.mktemp("places"), s3)


@pytest.fixture(scope="module")
def reference(clean):
    """Each command's stdout on the clean local store, threaded."""
    local, model = clean
    out = {}
    for command in COMMANDS:
        if command == "report":
            continue
        rc, stdout, err = run_cli(argv_of(command, str(local), model, None, "threads"))
        assert rc == 0, err
        out[command] = comparable(stdout)
    return out


def comparable(stdout: str):
    """A command's JSON output without the store's location (the copies live elsewhere)."""
    result = json.loads(stdout)
    if isinstance(result, dict):
        result.pop("store", None)
    return result


def assert_refused(command: str, rc: int, stdout: str, stderr: str, words, out_dir) -> None:
    """Non-zero exit, one error line holding ``words``, no traceback, no numbers, no published report run."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"filtershift {command}: error:")]
    assert rc != 0, f"{command} exited 0 on a damaged store; stdout: {stdout[:300]}"
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    if command == "report":
        assert not (out_dir / "latest").exists() and not (out_dir / "latest.txt").exists()
        assert not list((out_dir / "runs").glob("*")) if (out_dir / "runs").exists() else True
    else:
        assert stdout == "", stdout[:300]


def scheduler_of(name: str, request) -> str:
    return "threads" if name == "threads" else request.getfixturevalue("cluster")


@pytest.mark.parametrize("location,scheduler", _extended_on_s3_cluster(
    [(loc, sch) for loc in ("local", "s3") for sch in ("threads", "cluster")]))
def test_clean_store_gives_the_reference(location, scheduler, places, clean, reference, request, tmp_path):
    """The harness itself: the undamaged copies give the local threaded numbers, bit for bit (the report's
    publication is tests/test_report.py's and tests/test_outputs.py's)."""
    store, _, _ = places.put(location, "clean copy")
    for command in reference:
        rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], None, scheduler_of(scheduler, request)))
        assert rc == 0, stderr
        assert comparable(stdout) == reference[command], command


def test_the_extended_commands_cover_every_fault_and_place():
    """The extended depth's rotation: every fault meets all five commands, every command every location x
    scheduler."""
    runs = {(case, command) for i, case in enumerate(CASES) for command in commands_of(i, "extended")}
    for fault in FAULTS:
        assert {command for (f, _, _), command in runs if f == fault} == set(COMMANDS), fault
    for place in {(loc, sch) for _, loc, sch in CASES}:
        assert {command for (_, *p), command in runs if tuple(p) == place} == set(COMMANDS), place


@pytest.mark.parametrize("fault,location,scheduler", _extended_on_s3_cluster(CASES))
def test_fault_fails_loudly(fault, location, scheduler, places, clean, request, tmp_path):
    damage, words = FAULTS[fault]
    store, fs, root = places.put(location, f"{fault} {location}")
    damage(fs, root)
    for command in commands_of(CASES.index((fault, location, scheduler))):
        out_dir = tmp_path / f"rep-{command}"
        rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], out_dir, scheduler_of(scheduler, request)))
        assert_refused(command, rc, stdout, stderr, words, out_dir)


@pytest.mark.parametrize("scheduler,location", _extended_on_s3_cluster(
    [(sch, loc) for sch in ("threads", "cluster") for loc in ("local", "s3")]))
def test_store_deleted_during_a_run(location, scheduler, places, clean, request, tmp_path, monkeypatch):
    """The store disappears after it was opened (deleted, moved, unmounted) and before its chunks are read: the
    error says where (this host, for a local store, on the threads and on the workers) and names the remedies
    (report, which opens the store again, says it finds no store there).
    (tests/test_reads.py checks the zstd store, read through zarr's codecs, the same way.)"""
    from filtershift.store import dataset

    opened = dataset.open_store
    current = {}

    def open_then_delete(*args, **kwargs):
        ds = opened(*args, **kwargs)
        fs, root = current["fs"], current["root"]
        fs.rm(root, recursive=True)
        return ds

    monkeypatch.setattr(dataset, "open_store", open_then_delete)
    places_ = [("threads", "local"), ("threads", "s3"), ("cluster", "local"), ("cluster", "s3")]
    for command in commands_of(places_.index((scheduler, location))):
        store, current["fs"], current["root"] = places.put(location, f"deleted {location} {command}")
        out_dir = tmp_path / f"rep-{command}"
        rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], out_dir, scheduler_of(scheduler, request)))
        # report opens the store again in its own stage: there it is a store not found (asserted by name below)
        words = () if command == "report" else \
            (f"does not exist on host {socket.gethostname()}", "object storage", "shared file system") \
            if location == "local" else ("the store no longer exists",)
        assert_refused(command, rc, stdout, stderr, words, out_dir)
        assert store.split("/")[-1] in stderr


def test_worker_without_the_store(places, clean, blind_cluster, tmp_path):
    """Workers that cannot see the store's directory (another host, another mount) fail with a message that says
    so and names the remedies, for every command; never zeros."""
    address, hidden = blind_cluster
    store, _, _ = places.put("local", "hidden", parent=hidden)
    for command in commands_of(0) + commands_of(1):
        out_dir = tmp_path / f"rep-{command}"
        rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], out_dir, address))
        assert_refused(command, rc, stdout, stderr, ("shared file system", "object storage"), out_dir)


#: Root reads any file; without these two capabilities it obeys the file mode like any user.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def no_dac_cluster():
    """Two worker processes without the capabilities that let root read a file whose mode forbids it."""
    procs = start_local_processes(2, nthreads=1, memory_limit="1GB", idle_timeout="600s", wrap=NO_DAC)
    try:
        yield procs.address
    finally:
        procs.stop()


@pytest.mark.parametrize("scheduler", ["threads", "cluster"])
def test_unreadable_chunk(scheduler, places, clean, request, tmp_path):
    """A chunk file the reading process may not open (mode 000 for a process without root's override); object
    storage has no such case (a refused request is a remote error, tests/test_scale_out.py)."""
    store, _, root = places.put("local", f"unreadable {scheduler}")
    os.chmod(_chunk(root, 1), 0)
    # extended depth: compare, pca on threads; quality, report on the cluster (quick: quality; drift)
    for command in commands_of({"threads": 2, "cluster": 1}[scheduler]):
        out_dir = tmp_path / f"rep-{command}"
        if scheduler == "threads":
            argv = argv_of(command, store, clean[1], out_dir, "threads")
            proc = subprocess.run([*NO_DAC, sys.executable, "-m", "filtershift.cli", *argv], capture_output=True,
                                  text=True, timeout=300)
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        else:
            address = request.getfixturevalue("no_dac_cluster")
            rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], out_dir, address))
        assert_refused(command, rc, stdout, stderr, ("chunk 1", "permission"), out_dir)


@pytest.fixture(scope="module")
def uncredentialed_cluster(s3):
    """Two worker processes started without AWS credentials or endpoint in their environment."""
    procs = start_local_processes(2, nthreads=1, memory_limit="1GB", idle_timeout="600s",
                                  wrap=["env", "-u", "AWS_ACCESS_KEY_ID", "-u", "AWS_SECRET_ACCESS_KEY",
                                        "-u", "AWS_ENDPOINT_URL"])
    try:
        yield procs.address
    finally:
        procs.stop()


def test_workers_without_credentials(places, clean, uncredentialed_cluster, tmp_path):
    """The client can read the S3 store, its workers cannot: a one-line error saying that each worker needs the
    credentials too (before: a botocore traceback). The endpoint the client resolved from AWS_ENDPOINT_URL travels
    with the tasks, so the workers ask the same server (not AWS's bucket of the same name)."""
    store, _, _ = places.put("s3", "uncredentialed")
    for command in commands_of(0) + commands_of(1):
        out_dir = tmp_path / f"rep-{command}"
        rc, stdout, stderr = run_cli(argv_of(command, store, clean[1], out_dir, uncredentialed_cluster))
        assert_refused(command, rc, stdout, stderr, ("no usable credentials", "a dask worker reads the store"),
                       out_dir)


def test_endpoint_from_the_environment_is_part_of_the_location(monkeypatch):
    from filtershift.store.format import Location

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert Location.of("s3://b/db.zarr").storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert Location.of("s3://b/db.zarr", {"endpoint_url": "http://x:1"}).storage_options["endpoint_url"] == \
        "http://x:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert Location.of("s3://b/db.zarr").storage_options["endpoint_url"] == "http://127.0.0.1:10"
    assert Location.of("memory://b/db.zarr").storage_options == {}
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert Location.of("s3://b/db.zarr").storage_options == {}
