"""The command-line boundary: quiet pipes, arguments refused before any work, errors that name the situation, and a
parser that builds without the heavy stack (issues #12 and #14)."""

import argparse
import fcntl
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import h5py
import pytest
import s3fs
from _s3 import moto_server

import filtershift.cli as cli
from filtershift import cluster, synth
from filtershift.store import format as fmt
from filtershift.store.convert import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
       "FILTERSHIFT_PROGRESS": "0"}
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|NotFound\w*)\b")
F_SETPIPE_SZ = 1031  # Linux fcntl: set a pipe's capacity
SIGPIPE_EXIT = 128 + 13  # what a shell reports for a tool ended by SIGPIPE
COMMANDS = ["compare", "convert", "correlate", "demo", "drift", "extract", "info", "pca", "quality", "report", "synth",
            "upgrade", "verify"]


def run(*args, env=None, stdout=subprocess.PIPE, timeout=120):
    return subprocess.run([sys.executable, "-m", "filtershift.cli", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env or ENV, timeout=timeout)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny complete store (3,000 filters in 3 chunks) beside its HDF5 source."""
    root = tmp_path_factory.mktemp("boundary")
    src = synth.synthesize(root / "dataset.h5", n_filters=3000, n_models=3, seed=2)
    convert(src, root / "db.zarr", chunk_filters=1024)
    return root / "db.zarr"


# 1. Quiet pipes ---------------------------------------------------------------------------------------------------

def _unread_pipe_run(*args):
    """Run the CLI with stdout on a pipe whose reader has already left; return (rc, stderr)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "filtershift.cli", *map(str, args)], stdout=w,
                              stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    finally:
        os.close(w)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [["info", "{store}"], ["info", "{store}", "--json"], ["verify", "{store}"],
                                  ["pca", "{store}", "--scheduler", "threads"], ["cluster", "defaults"]],
                         ids=lambda a: " ".join(a[:1] + a[2:3]))
def test_closed_pipe_exits_quietly(store, args):
    rc, err = _unread_pipe_run(*[a.format(store=store) for a in args])
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert rc == SIGPIPE_EXIT, (rc, err)


def test_reader_leaving_mid_output_exits_quietly(store):
    """`filtershift quality STORE --json | head -c 10`: the reader takes a few bytes and closes the pipe while the
    command still writes (a one-page pipe holds less than the output, so the writer is blocked when it leaves)."""
    r, w = os.pipe()
    fcntl.fcntl(r, F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, "-m", "filtershift.cli", "quality", str(store), "--json",
                             "--scheduler", "threads"], stdout=w, stderr=subprocess.PIPE, env=ENV)
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        head = reader.read(10)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == SIGPIPE_EXIT, err
    assert head.startswith(b"[") and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_other_broken_pipes_are_not_hidden(monkeypatch, capsys):
    """A BrokenPipeError while stdout is still read (a socket, a child's pipe) is a real failure, not a quiet end."""
    parser = argparse.ArgumentParser()
    parser.set_defaults(func=lambda args: (_ for _ in ()).throw(BrokenPipeError("a worker's pipe")), command="x")
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(BrokenPipeError):
        cli.main([])


# 2. Arguments are refused before any work --------------------------------------------------------------------------

BAD = [
    ("convert S.h5 D.zarr", "--chunk-filters", "0"), ("convert S.h5 D.zarr", "--chunk-filters", "-1"),
    ("convert S.h5 D.zarr", "--chunk-filters", "many"),
    ("drift STORE --by task", "--bins", "0"), ("drift STORE --by task", "--min-filters", "-5"),
    ("drift STORE --by task", "--min-models", "-1"), ("drift STORE --by task", "--workers", "0"),
    ("drift STORE --by task", "--memory-limit", "0"),
    ("compare M.onnx --store STORE", "--bins", "0"), ("compare M.onnx --store STORE", "--top", "0"),
    ("compare M.onnx --store STORE", "--workers", "-2"),
    ("demo", "--filters", "-5"), ("demo", "--models", "0"), ("demo", "--seed", "-1"), ("demo", "--workers", "0"),
    ("demo", "--memory-limit", "-1GB"),
    ("pca STORE", "--workers", "0"), ("pca STORE", "--memory-limit", "plenty"),
    ("quality STORE", "--top", "0"), ("quality STORE", "--eps", "0"), ("quality STORE", "--eps", "1"),
    ("quality STORE", "--eps", "nan"), ("quality STORE", "--max-sparsity", "0"),
    ("quality STORE", "--max-sparsity", "1.5"), ("quality STORE", "--entropy-low", "1"),
    ("quality STORE", "--entropy-low", "-0.1"), ("quality STORE", "--entropy-high", "0"),
    ("quality STORE", "--entropy-high", "inf"), ("quality STORE", "--min-filters", "1"),
    ("quality STORE", "--workers", "0"),
    ("synth OUT.h5", "--filters", "0"), ("synth OUT.h5", "--models", "0"), ("synth OUT.h5", "--seed", "-1"),
    ("synth OUT.h5", "--filters", "1.5"),
    ("cluster defaults", "--workers", "0"), ("cluster defaults", "--memory-limit", "0"),
    ("cluster check", "--timeout", "0"), ("cluster check", "--timeout", "-1"),
    ("cluster local", "--workers", "0"), ("cluster local", "--threads", "0"), ("cluster local", "--port", "65536"),
    ("cluster local", "--port", "-1"), ("cluster local", "--memory-limit", "x"),
    ("drift STORE --by task", "--permutations", "-1"), ("drift STORE --by task", "--alpha", "0"),
    ("drift STORE --by task", "--alpha", "1"), ("drift STORE --by task", "--seed", "-3"),
    ("correlate STORE --with n", "--boot", "1"), ("correlate STORE --with n", "--level", "1"),
    ("correlate STORE --with n", "--eps", "0"), ("correlate STORE --with n", "--seed", "-1"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Starting a scheduler, opening a store, converting or synthesizing fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    import filtershift.store.convert
    import filtershift.synth

    monkeypatch.setattr(cluster, "scheduler_context", forbidden)
    monkeypatch.setattr(cluster, "start_local_processes", forbidden)
    monkeypatch.setattr(fmt, "open_group", forbidden)
    monkeypatch.setattr(filtershift.store.convert, "convert", forbidden)
    monkeypatch.setattr(filtershift.synth, "synthesize", forbidden)


@pytest.mark.parametrize("command,option,value", BAD, ids=lambda x: x.split()[0] if " " in x else x)
def test_bad_numbers_are_refused_at_parse_time(command, option, value, no_work, capsys, tmp_path):
    argv = [tmp_path / "x" if word in ("STORE", "OUT.h5") else word for word in command.split()]
    t0 = time.perf_counter()
    code = cli.main([*map(str, argv), f"{option}={value}"])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2
    assert f"argument {option}: " in err and value.lstrip("-") in err and "allowed: " in err, err
    assert elapsed < 2, f"{elapsed:.1f} s"


def test_every_numeric_option_has_a_range():
    """No option parses with a bare int or float: each numeric option's type checks a range."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(commands) == sorted(COMMANDS + ["cluster"])          # COMMANDS (the --help test) is complete
    unchecked, stack = [], [parser]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.type in (int, float):
                unchecked.append(f"{p.prog} {action.option_strings}")
    assert not unchecked


@pytest.mark.parametrize("argv,needle", [
    (["demo", "--filters", "10"], "--filters 10 is too few for --models 48"),
    (["quality", "STORE", "--entropy-low", "0.6", "--entropy-high", "0.5"], "--entropy-high 0.5 must exceed"),
    (["quality", "STORE", "--out", "q.txt"], "--out q.txt: unknown table format"),
    (["quality", "STORE", "--out", "/no/such/dir/q.csv"], "folder /no/such/dir does not exist"),
    (["compare", "missing.onnx", "--store", "STORE"], "missing.onnx: no such model file"),
    (["compare", "model.txt", "--store", "STORE"], "unknown model format '.txt'"),
])
def test_combinations_are_refused_before_a_cluster(argv, needle, no_work, capsys):
    assert cli.main(argv) == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize("command", [["pca"], ["drift", "--by", "task"], ["quality"]])
def test_a_missing_store_is_refused_before_a_cluster(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cluster, "scheduler_context", lambda *a, **k: pytest.fail("cluster started"))
    assert cli.main([command[0], str(tmp_path / "nothing.zarr"), *command[1:]]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_demo_refuses_before_a_cluster_in_a_real_process(tmp_path):
    t0 = time.perf_counter()
    proc = run("demo", "--filters", "-5", "--out", tmp_path / "demo")
    assert proc.returncode == 2 and "argument --filters: -5 is out of range" in proc.stderr, proc.stderr
    assert "local cluster:" not in proc.stderr and "dashboard:" not in proc.stderr and not (tmp_path / "demo").exists()
    print(f"demo --filters -5 refused in {time.perf_counter() - t0:.2f} s")


# 3. Errors name the situation ---------------------------------------------------------------------------------------

def _error(capsys, *argv) -> str:
    assert cli.main(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    assert not CLASS_NAME.search(err), err
    return err


def test_info_names_what_is_there_instead_of_a_store(store, tmp_path, capsys):
    src = store.parent / "dataset.h5"
    assert f"{src}: this is an HDF5 source, not a filtershift store; convert it first with `filtershift convert " \
           f"{src} DB.zarr`" in _error(capsys, "info", src)
    blocked = tmp_path / "userblock.h5"                     # the signature after a 512-byte user block
    with h5py.File(blocked, "w", userblock_size=512) as f:
        f["x"] = [1]
    assert "this is an HDF5 source" in _error(capsys, "info", blocked)
    assert "no such file or directory" in _error(capsys, "verify", tmp_path / "nothing.zarr")
    (tmp_path / "empty").mkdir()
    assert "a directory without a zarr.json, not a filtershift store" in _error(capsys, "info", tmp_path / "empty")
    assert f"it holds {store}" in _error(capsys, "info", store.parent)
    (tmp_path / "notes.txt").write_text("hello")
    assert "a file, not a filtershift store" in _error(capsys, "info", tmp_path / "notes.txt")
    (tmp_path / "net.onnx").write_bytes(b"\x08\x07")
    assert "filtershift extract" in _error(capsys, "info", tmp_path / "net.onnx")


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws(monkeypatch):
    """Fake credentials and one attempt per request in the environment; no cached S3 filesystems before or after."""
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIABOUNDARY0TEST", "AWS_SECRET_ACCESS_KEY": "boundary-secret-0",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": os.devnull,
                        "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield monkeypatch
    s3fs.S3FileSystem.clear_instance_cache()


def test_info_names_a_missing_bucket_and_a_dead_endpoint(s3_endpoint, aws, capsys):
    """The endpoint travels as the CLI user's would: AWS_ENDPOINT_URL."""
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="a", aws_secret_access_key="b",
                 region_name="us-east-1").create_bucket(Bucket="present")
    aws.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    err = _error(capsys, "info", "s3://nobucket/x")
    assert "s3://nobucket/x: bucket 'nobucket' does not exist" in err, err
    assert "nothing at this path, so no filtershift store" in _error(capsys, "info", "s3://present/x")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        aws.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
    s3fs.S3FileSystem.clear_instance_cache()             # a new process would build its client anew
    err = _error(capsys, "info", "s3://present/x")
    assert "cannot open the store: cannot connect to the endpoint" in err and "boundary-secret-0" not in err, err


@pytest.mark.parametrize("exc,reason", [
    (PermissionError("denied"), "access denied"), (TimeoutError("slow"), "did not answer in time"),
    (ConnectionRefusedError("refused"), "cannot connect to the endpoint"), (OSError("odd"), "the request failed"),
])
def test_remote_errors_say_what_happened_without_class_names(exc, reason):
    with pytest.raises(fmt.StoreError) as info:
        with fmt.remote_errors(fmt.Location.of("s3://b/db.zarr")):
            raise exc
    assert reason in str(info.value) and type(exc).__name__ not in str(info.value)


def test_no_class_names_are_formatted_into_messages():
    """Source check of the files this boundary owns: no f-string interpolates an exception's class name."""
    files = [os.path.join(ROOT, "filtershift", "cli", f) for f in os.listdir(os.path.join(ROOT, "filtershift", "cli"))
             if f.endswith(".py")] + [os.path.join(ROOT, "filtershift", "store", "format.py")]
    pattern = r"\{[^{}]*(__class__|type\(\w+\))\.__name__[^{}]*\}"
    found = [f for f in files if re.search(pattern, Path(f).read_text())]
    assert not found


# 4. A light parser -------------------------------------------------------------------------------------------------

HEAVY = ("dask", "distributed", "numba", "matplotlib", "xarray", "zarr", "pandas", "numpy", "h5py", "fsspec")


def test_parser_builds_without_the_heavy_stack():
    """Neither -X importtime (import statements) nor sys.modules (also importlib.import_module) shows the stack."""
    code = "import sys, filtershift.cli as c; c.build_parser(); print(' '.join(sys.modules))"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=ENV,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    timed = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    loaded = set(proc.stdout.split())
    assert "filtershift.cli.quality" in loaded and "filtershift.cli._args" in timed
    assert not sorted(m for m in timed | loaded if m.split(".")[0] in HEAVY)


def _heavy_imports(importtime_stderr: str) -> list[str]:
    """The heavy modules in ``-X importtime`` output (after checking that it holds nothing else)."""
    lines = importtime_stderr.splitlines()
    assert all(line.startswith("import time:") for line in lines), importtime_stderr[-2000:]
    timed = {line.rsplit("|", 1)[-1].strip() for line in lines[1:]}
    return sorted(m for m in timed if m.split(".")[0] in HEAVY)


def test_importing_the_cli_loads_no_heavy_module():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import filtershift.cli"], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert proc.returncode == 0 and "filtershift.cli" in proc.stderr, proc.stderr[-2000:]
    assert not _heavy_imports(proc.stderr)


@pytest.mark.parametrize("command", [[], ["cluster"], ["cluster", "defaults"], ["cluster", "check"],
                                     ["cluster", "local"], *([c] for c in COMMANDS)],
                         ids=lambda c: " ".join(c) or "filtershift")
def test_help_exits_0(command):
    """Every help page, through the console script as a user runs it, under -X importtime: none of them imports
    dask, distributed, numba, matplotlib, xarray, zarr (or the rest of HEAVY), and nothing else goes to stderr."""
    script = os.path.join(os.path.dirname(sys.executable), "filtershift")
    argv = [sys.executable, "-X", "importtime", script] if os.path.isfile(script) else \
        [sys.executable, "-X", "importtime", "-m", "filtershift.cli"]
    proc = subprocess.run([*argv, *command, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0 and "usage: filtershift" in proc.stdout, proc.stderr[-2000:]
    assert not _heavy_imports(proc.stderr)


def test_repeated_constants_agree_with_their_modules():
    """The CLI repeats a few constants so that its parser imports no zarr or numpy; they must not drift apart."""
    from filtershift.cli import convert as cli_convert
    from filtershift.cli import synth as cli_synth
    from filtershift.store import format as store_format

    assert (cli_convert.CODECS, cli_convert.DEFAULT_CODEC, cli_convert.DEFAULT_CHUNK_FILTERS) == \
           (store_format.CODECS, store_format.DEFAULT_CODEC, store_format.DEFAULT_CHUNK_FILTERS)
    assert (cli_synth.FORMATS, cli_synth.STYLES, cli_synth.META_FORMATS, cli_synth.LAYOUTS, cli_synth.DTYPES,
            cli_synth.ROBUST_STRATA) == \
           (synth.FORMATS, synth.STYLES, synth.META_FORMATS, synth.LAYOUTS, synth.DTYPES, synth.ROBUST_STRATA)


def test_scheduler_options_reach_the_scheduler_context(monkeypatch):
    from filtershift.cli import _scheduler

    seen = {}
    monkeypatch.setattr(cluster, "scheduler_context", lambda *a, **k: seen.update(args=a, kwargs=k))
    args = cli.build_parser().parse_args(["pca", "db.zarr", "--scheduler", "threads", "--workers", "3",
                                          "--memory-limit", "2GB", "--no-dashboard"])
    _scheduler.context_from_args(args)
    assert seen == {"args": ("threads",), "kwargs": {"n_workers": 3, "memory_limit": "2GB", "dashboard": False,
                                                     "default": "local"}}
