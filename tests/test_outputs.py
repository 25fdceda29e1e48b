"""Every output location honours its scheme: report --out, quality --out and compare --figure to memory:// and to
S3 (moto on 127.0.0.1) are written through fsspec and read back from there; the report's object-storage publish
model (upload, run.json last, pointer PUTs, lock, failed runs, reuse); unknown, read-only or unreachable schemes
fail with one line naming the option; and no directory named after a scheme (``s3:``, ``memory:``) ever appears
in the working directory."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from _s3 import moto_s3

from filtershift.cli import main as cli
from filtershift.report import build_report
from filtershift.store.format import Location, read_table
from filtershift.synth import synthesize

BUCKET = "filtershift-outputs"
SMALL = {"groupings": ["task"], "metrics": ["kl_sym"], "bootstrap": {"n_boot": 0},
         "figures": {"formats": ["png"], "density_bins": 0}}
PNG = b"\x89PNG\r\n\x1a\n"


def scheme_dirs(root: Path) -> list[str]:
    """Every file or directory under ``root`` whose name ends in ':' (a URL scheme turned into a path)."""
    return [str(p) for p in root.rglob("*") if p.name.endswith(":")]


@pytest.fixture(autouse=True)
def workdir(tmp_path, monkeypatch):
    """Each test runs in an empty working directory, which must hold no ``s3:``/``memory:`` directory after it."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert scheme_dirs(work) == []


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, found through the environment (as a CLI user configures it), one bucket."""
    import s3fs

    with moto_s3(tmp_path_factory.mktemp("aws"), BUCKET, endpoint_variable="AWS_ENDPOINT_URL_S3",
                 env={"AWS_MAX_ATTEMPTS": "1"}):
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield f"s3://{BUCKET}"
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "db.zarr"
    synthesize(path, n_filters=20_000, n_models=6, seed=1, format="zarr")
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    import yaml

    path = tmp_path_factory.mktemp("config") / "report.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return str(path)


def memory_url() -> str:
    return f"memory://outputs-{uuid.uuid4().hex[:8]}"


def cat(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def report_cli(store, out, config, *extra) -> int:
    return cli(["report", str(store), "--out", out, "--config", config, "--scheduler", "threads", "--json", "-q",
                *extra])


def check_published(base: str, run: str, n_filters: int) -> dict:
    """The run under ``base`` is complete and published: pointers, history, redirect, every referenced file."""
    assert cat(f"{base}/latest.txt").decode().strip() == run
    pointer = json.loads(cat(f"{base}/latest.json"))
    assert pointer["run"] == run and pointer["index"] == f"runs/{run}/index.html"
    assert f"runs/{run}/index.html" in cat(f"{base}/latest/index.html").decode()
    history = cat(f"{base}/index.html").decode()
    assert f'href="runs/{run}/index.html"' in history
    results = json.loads(cat(f"{base}/runs/{run}/results.json"))
    assert results["schema"] == "filtershift-report/1" and results["run"]["name"] == run
    assert results["store"]["n_filters"] == n_filters
    page = cat(f"{base}/runs/{run}/index.html").decode()
    assert page.lstrip().lower().startswith("<!doctype html")
    for files in list(results["figures"].values()) + list(results.get("tables", {}).values()):
        for rel in files.values():
            data = cat(f"{base}/runs/{run}/{rel}")
            assert data[:8] == PNG if rel.endswith(".png") else len(data) > 0
    run_json = json.loads(cat(f"{base}/runs/{run}/run.json"))
    assert run_json["status"] == "complete" and run_json["name"] == run
    assert b"stage: basis" in cat(f"{base}/runs/{run}/run.log")
    return results


# -- report --------------------------------------------------------------------------------------------------------


def test_report_to_memory_is_published_and_reused(store, config, capsys):
    base = memory_url()
    assert report_cli(store, base, config) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "built" and first["run_dir"] == f"{base}/runs/{first['run']}"
    assert first["report"] == f"{base}/runs/{first['run']}/index.html"
    check_published(base, first["run"], 20_000)
    assert report_cli(store, base, config) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["status"] == "skipped" and second["run"] == first["run"]
    fs, root = fsspec.core.url_to_fs(base)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/runs", detail=False)] == [first["run"]]
    assert not fs.exists(f"{root}/.filtershift-report.lock")


def test_report_to_s3_is_published_and_reused(s3, store, config, capsys):
    base = f"{s3}/reports"
    assert report_cli(store, base, config) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["status"] == "built" and first["history"] == f"{base}/index.html"
    results = check_published(base, first["run"], 20_000)
    assert results["headline"]["filters"] == 20_000
    table = pd.read_parquet(io.BytesIO(cat(f"{base}/runs/{first['run']}/tables/layer_quality.parquet")))
    records = read_table(Location.of(store), "records", 1)
    assert len(table) == len(records)
    assert report_cli(store, base, config) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped"
    fs, root = fsspec.core.url_to_fs(base)
    assert len(fs.ls(f"{root}/runs", detail=False)) == 1
    assert not fs.exists(f"{root}/.filtershift-report.lock")


def fake_run(spec, identity, name, staging, default_scheduler, storage_options=None):
    """A cheap stand-in for the analysis: the files a run publishes, run.json among them."""
    (staging / "figures").mkdir()
    (staging / "figures" / "f.png").write_bytes(PNG + b"fake")
    (staging / "index.html").write_text("<!doctype html><p>fake</p>")
    (staging / "results.json").write_text("{}")
    (staging / "run.json").write_text(json.dumps({
        "name": name, "created": "2026-01-01T00:00:00+00:00", "spec_hash": identity["spec_hash"],
        "identity": identity, "status": "complete", "headline": {"filters": identity["n_filters"]}}))
    return {}


def test_object_storage_publish_model(store, monkeypatch):
    """Reuse of an older run, a failure (published run untouched, log under failed/), an upload killed before
    run.json (invisible, then removed), and the lock (a second writer exits 4)."""
    monkeypatch.setattr("filtershift.report.build._build_run", fake_run)
    base = memory_url()
    fs, root = fsspec.core.url_to_fs(base)
    a = build_report(store, base, SMALL, scheduler="threads")
    b = build_report(store, base, {**SMALL, "bins": 33}, scheduler="threads")
    assert (a.status, b.status) == ("built", "built") and cat(f"{base}/latest.txt").decode().strip() == b.run
    again = build_report(store, base, SMALL, scheduler="threads")
    assert again.status == "reused" and again.run == a.run and again.run_dir == f"{base}/runs/{a.run}"
    assert json.loads(cat(f"{base}/latest.json"))["run"] == a.run
    history = cat(f"{base}/index.html").decode()
    assert a.run in history and b.run in history

    def boom(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr("filtershift.report.build._build_run", boom)
    before = sorted(fs.find(f"{root}/runs"))
    with pytest.raises(RuntimeError, match="planted failure"):
        build_report(store, base, {**SMALL, "bins": 34}, scheduler="threads")
    assert sorted(fs.find(f"{root}/runs")) == before and cat(f"{base}/latest.txt").decode().strip() == a.run
    (failed,) = fs.ls(f"{root}/failed", detail=False)
    assert "planted failure" in fs.cat_file(f"{failed}/run.log").decode()

    # an upload killed after index.html but before run.json: never visible, removed by the next run
    fs.pipe_file(f"{root}/runs/20990101T000000Z-deadbeef/index.html", b"partial")
    assert "20990101T000000Z-deadbeef" not in cat(f"{base}/index.html").decode()
    monkeypatch.setattr("filtershift.report.build._build_run", fake_run)
    nxt = build_report(store, base, SMALL, scheduler="threads")
    assert nxt.status == "skipped" and nxt.removed_unfinished == ["20990101T000000Z-deadbeef"]
    assert not fs.exists(f"{root}/runs/20990101T000000Z-deadbeef")

    fs.pipe_file(f"{root}/.filtershift-report.lock", b'{"host": "elsewhere", "pid": 1}')
    from filtershift.report.publish import ReportBusyError

    with pytest.raises(ReportBusyError, match="elsewhere"):
        build_report(store, base, SMALL, scheduler="threads")
    assert fs.exists(f"{root}/.filtershift-report.lock")


# -- quality --out and compare --figure ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_quality_out_to_s3_and_memory_equals_local(s3, store, suffix, tmp_path, capsys):
    local = tmp_path / f"q.{suffix}"
    assert cli(["quality", str(store), "--out", str(local), "--scheduler", "threads"]) == 0
    read = pd.read_parquet if suffix == "parquet" else pd.read_csv
    want = read(local)
    assert len(want) > 0
    for url in (f"{s3}/quality/q.{suffix}", f"{memory_url()}/q.{suffix}"):
        assert cli(["quality", str(store), "--out", url, "--scheduler", "threads"]) == 0
        assert f"wrote {len(want):,} rows to {url}" in capsys.readouterr().out
        data = cat(url)
        pd.testing.assert_frame_equal(read(io.BytesIO(data)), want)
        if suffix == "csv":
            assert data == local.read_bytes()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_file({"conv1.weight": (rng.normal(size=(8, 3, 3, 3)) * 0.1).astype(np.float32),
               "conv2.weight": (rng.normal(size=(8, 8, 3, 3)) * 0.1).astype(np.float32)}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def compared(store, model):
    """One comparison, reused by the CLI runs below (they test where the figure goes, not the numbers)."""
    import dask

    from filtershift.compare import compare

    with dask.config.set(scheduler="threads"):
        return compare(model, str(store), by=["task", "visual_category"])


def test_compare_figure_to_s3_and_memory(s3, store, model, compared, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr("filtershift.compare.compare", lambda *args, **kwargs: compared)
    local = tmp_path / "c.png"
    for figure in (str(local), f"{s3}/figures/c.png", f"{memory_url()}/c.png"):
        assert cli(["compare", model, "--store", str(store), "--figure", figure, "--scheduler", "threads"]) == 0
        assert f"figure: {figure}" in capsys.readouterr().out
        data = local.read_bytes() if figure == str(local) else cat(figure)
        assert data[:8] == PNG
        with Image.open(io.BytesIO(data)) as img, Image.open(local) as ref:
            assert img.format == "PNG" and img.size == ref.size
    svg = f"{memory_url()}/c.svg"
    assert cli(["compare", model, "--store", str(store), "--figure", svg, "--scheduler", "threads", "--json"]) == 0
    capsys.readouterr()
    assert b"<svg" in cat(svg)


@pytest.mark.extended
def test_convert_and_extract_to_an_s3_store(s3, source, model, capsys):
    """``convert DST`` and ``extract --store`` with a URL write the store there (read back through zarr/fsspec);
    ``extract --store s3:/...`` (a URL that lost its '//') is refused instead of creating a local ``s3:`` store."""
    import h5py
    from safetensors.numpy import load_file

    from filtershift.store.dataset import open_store

    url = f"{s3}/stores/db.zarr"
    assert cli(["convert", source, url]) == 0
    assert cli(["extract", model, "--store", url]) == 0
    assert f"{url}: added 1 model(s)" in capsys.readouterr().out
    weights = open_store(url)["weights"].values
    with h5py.File(source) as h:
        np.testing.assert_array_equal(weights[:len(h["filters"])], h["filters"][:])
        n = len(h["filters"])
    mine = np.concatenate([w.reshape(-1, 9) for w in load_file(model).values()])
    assert len(weights) == n + len(mine)
    np.testing.assert_array_equal(np.sort(weights[n:].ravel()), np.sort(mine.ravel()))
    assert cli(["extract", model, "--store", f"s3:/{BUCKET}/stores/other.zarr"]) == 2
    assert "'s3:'" in capsys.readouterr().err


# -- refused locations -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return str(synthesize(tmp_path_factory.mktemp("source") / "src.h5", n_filters=1000, n_models=2, seed=2))


def commands(store, model, target, source=None):
    return {
        "report": ["report", str(store), "--out", target, "--scheduler", "threads"],
        "quality": ["quality", str(store), "--out", f"{target}/q.csv", "--scheduler", "threads"],
        "compare": ["compare", model, "--store", str(store), "--figure", f"{target}/c.png", "--scheduler",
                    "threads"],
        "demo": ["demo", "--out", target, "--filters", "1000", "--models", "2", "--scheduler", "threads"],
        "synth": ["synth", f"{target}/x.h5", "--filters", "1000", "--models", "2"],
        "convert": ["convert", str(source), f"{target}/db.zarr"],
    }


@pytest.mark.parametrize("command", ["report", "quality", "compare", "demo", "synth", "convert"])
@pytest.mark.parametrize("target,needle", [
    ("nosuchscheme://bucket/x", "unknown URL scheme nosuchscheme://"),
    ("https://example.invalid/x", "https:// is read-only"),
    ("s3:/bucket/x", "'s3:'"),
    ("memory:/bucket/x", "'memory:'"),
])
def test_unsupported_location_is_refused(store, model, source, command, target, needle, capsys):
    argv = commands(store, model, target, source)[command]
    code = cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err[-1:]) == 1 and needle in err[-1] and "Traceback" not in "\n".join(err)
    option = {"report": "--out", "quality": "--out", "compare": "--figure", "demo": "--out", "synth": "OUT"}
    if command in option:
        assert f"{option[command]} " in err[-1]


def test_unreachable_object_store_fails_in_one_line(s3, store, model, capsys):
    assert cli(commands(store, model, "s3://no-such-bucket-outputs/x")["quality"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--out s3://no-such-bucket-outputs/x/q.csv: cannot write" in err[-1]
    assert "bucket does not exist" in err[-1]
    assert cli(commands(store, model, "s3://no-such-bucket-outputs/x")["report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--out s3://no-such-bucket-outputs/x: cannot write" in err[-1]


def test_unreachable_endpoint_fails_in_one_line(store, model, monkeypatch, capsys):
    import socket

    import s3fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIAOUTPUTSTEST", "AWS_SECRET_ACCESS_KEY": "outputs-secret",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        code = cli(commands(store, model, "s3://closed/x")["report"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--out s3://closed/x: cannot write" in err[-1] and "outputs-secret" not in err[-1]


def test_pathlib_collapsed_url_is_refused(store):
    """``Path("s3://b/x")`` is ``s3:/b/x``: the Python API refuses it rather than writing a local ``s3:`` dir."""
    from filtershift.errors import InputError

    with pytest.raises(InputError, match="'memory:'"):
        build_report(store, Path("memory://bucket/reports"), SMALL, scheduler="threads")
    assert not Path("memory:").exists() and os.listdir(".") == []


@pytest.mark.parametrize("target", ["s3://bucket/cluster", "memory://cluster", "s3:/bucket/cluster"])
def test_cluster_dir_must_be_a_local_path(target, capsys):
    """``cluster local --dir`` holds logs and a scheduler file for local processes: a URL is refused before any
    process starts (it used to become a local directory named ``s3:``)."""
    assert cli(["cluster", "local", "--dir", target, "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("filtershift cluster: error: --dir ") and "Traceback" not in "\n".join(err)
