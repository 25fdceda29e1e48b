"""One way to pass storage options (issue #13): ``storage_options={...}`` in Python, ``--storage-option KEY=VALUE``
on the command line, against moto's S3 on 127.0.0.1.

The endpoint variable is removed in these tests, so the store is reached only if the options arrive; the data read
through them is compared with the same source converted locally, read with plain zarr and pandas.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import zarr
from _s3 import KEY_ID, SECRET, moto_s3

from filtershift.cli import _args, main
from filtershift.store.convert import convert
from filtershift.store.dataset import open_store, records
from filtershift.store.format import Location, read_table
from filtershift.store.verify import info, verify
from filtershift.synth import synthesize

BUCKET = "filtershift-options"
URL = f"s3://{BUCKET}/db.zarr"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import s3fs

    with moto_s3(tmp_path_factory.mktemp("aws"), BUCKET, env={"AWS_MAX_ATTEMPTS": "1"}) as server:
        s3fs.S3FileSystem.clear_instance_cache()
        yield server
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def local(s3, tmp_path_factory):
    """(local store path, weights read with zarr): the same source converted locally and to S3."""
    root = tmp_path_factory.mktemp("options")
    src = synthesize(root / "dataset.h5", n_filters=12_000, n_models=5, seed=2)
    path = convert(src, str(root / "db.zarr"), chunk_filters=4096)
    convert(src, URL, chunk_filters=4096, storage_options=s3.options())
    return path, zarr.open_group(path, mode="r")["weights"][:]


@pytest.fixture
def no_endpoint(monkeypatch):
    """No endpoint in the environment: only the storage options can name the moto server."""
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()


def test_open_store_verify_info_take_storage_options(s3, local, no_endpoint):
    path, w = local
    ds = open_store(URL, storage_options=s3.options())
    np.testing.assert_array_equal(ds["weights"].values, w)
    v = zarr.open_group(path, mode="r").attrs["filtershift"]["version"]
    pd.testing.assert_frame_equal(records(ds), read_table(Location.of(path), "records", v),
                                  check_dtype=False)
    assert verify(URL, storage_options=s3.options()).ok
    assert info(URL, storage_options=s3.options())["n_filters"] == len(w)


def test_keyword_options_still_work_with_a_warning(s3, local, no_endpoint):
    _, w = local
    with pytest.warns(FutureWarning, match=r"storage_options=\{\.\.\.\}"):
        ds = open_store(URL, **s3.options())
    np.testing.assert_array_equal(ds["weights"].values, w)
    with pytest.warns(FutureWarning):
        assert verify(URL, **s3.options()).ok


def _cli_options(s3) -> list:
    """The options as a user types them: the endpoint and a JSON value; credentials from the environment."""
    return ["--storage-option", f"endpoint_url={s3.endpoint}",
            "--storage-option", 'client_kwargs={"region_name": "us-east-1"}']


def test_cli_storage_option_reaches_the_store(s3, local, no_endpoint, capsys):
    path, w = local
    assert main(["info", URL, "--json", *_cli_options(s3)]) == 0
    assert json.loads(capsys.readouterr().out)["n_filters"] == len(w)
    assert main(["verify", URL, *_cli_options(s3)]) == 0
    capsys.readouterr()
    out_url = f"s3://{BUCKET}/q.parquet"
    code = main(["quality", URL, "--no-orthogonality", "--scheduler", "threads", "--out", out_url,
                 *_cli_options(s3)])
    assert code == 0, capsys.readouterr().err
    import s3fs

    fs = s3fs.S3FileSystem(**s3.options(), skip_instance_cache=True)
    with fs.open(out_url) as f:
        table = pd.read_parquet(f)
    v = zarr.open_group(path, mode="r").attrs["filtershift"]["version"]
    recs = read_table(Location.of(path), "records", v)
    assert sorted(table["record"]) == recs["record"].tolist() and int(table["n"].sum()) == len(w)
    assert SECRET not in capsys.readouterr().err


def test_cli_without_the_option_does_not_reach_it(s3, local, no_endpoint, capsys, monkeypatch):
    """The control: the same command without --storage-option asks AWS's endpoint, not moto's, and fails."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")       # nothing listens: fail fast, offline
    assert main(["info", URL, "--json"]) != 0
    assert KEY_ID not in capsys.readouterr().err


@pytest.mark.parametrize("text, want", [("anon=true", ("anon", True)), ("endpoint_url=http://h:9000",
                                                                           ("endpoint_url", "http://h:9000")),
                                        ('client_kwargs={"region_name": "eu"}', ("client_kwargs",
                                                                                 {"region_name": "eu"})),
                                        ("key=", ("key", "")), ("retries=3", ("retries", 3))])
def test_storage_option_values(text, want):
    assert _args.storage_option(text) == want


def test_storage_option_refuses_what_is_not_key_value(capsys):
    for bad in ("endpoint", "=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            _args.storage_option(bad)
    assert main(["info", "db.zarr", "--storage-option", "nothing"]) == 2
    assert "is not KEY=VALUE" in capsys.readouterr().err


def test_compare_reads_the_store_and_writes_the_figure_with_the_options(s3, local, no_endpoint, tmp_path):
    """compare(..., storage_options=) equals the comparison against the local copy; its figure goes to S3."""
    import dask
    import s3fs
    import xarray as xr
    from safetensors.numpy import save_file

    from filtershift.compare import compare, plot

    rng = np.random.default_rng(0)
    model = str(tmp_path / "tiny.safetensors")
    save_file({"conv1.weight": (rng.normal(size=(8, 3, 3, 3)) * 0.1).astype(np.float32)}, model)
    with dask.config.set(scheduler="threads"):
        remote = compare(model, URL, by=["task"], storage_options=s3.options())
        here = compare(model, local[0], by=["task"])
    xr.testing.assert_allclose(remote.drop_attrs(), here.drop_attrs())
    plot(remote, f"s3://{BUCKET}/compare.png", storage_options=s3.options())
    data = s3fs.S3FileSystem(**s3.options(), skip_instance_cache=True).cat_file(f"{BUCKET}/compare.png")
    assert data.startswith(b"\x89PNG")


def test_build_report_reads_and_publishes_with_the_options(s3, local, no_endpoint):
    """The store and the output URL both through storage_options=; the options (a secret among them) appear in no
    published object."""
    import s3fs

    from filtershift.report import build_report

    spec = {"groupings": ["task"], "metrics": ["kl_sym"], "bootstrap": {"n_boot": 0},
            "figures": {"formats": ["png"], "density_bins": 0}}
    out = f"s3://{BUCKET}/reports"
    result = build_report(URL, out, spec, "threads", storage_options=s3.options())
    assert result.status == "built" and result.identity["n_filters"] == len(local[1])
    fs = s3fs.S3FileSystem(**s3.options(), skip_instance_cache=True)
    results = json.loads(fs.cat_file(f"{BUCKET}/reports/runs/{result.run}/results.json"))
    assert results["store"]["n_filters"] == len(local[1])
    for key in fs.find(f"{BUCKET}/reports"):
        assert SECRET.encode() not in fs.cat_file(key), key
