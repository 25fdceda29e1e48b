"""Release variants of dataset.h5 (issue #15): meta as CSV text, ``Datatype`` for ``Visual Category``, ``formula``
for ``fractals``. Each converts to the store its v1.0 equivalent (same synthetic plan) gives: the same weight bits,
records, models (up to the documented column name and raw label) and groupings. Expectations come from the source
files read with h5py and pandas, and the stores read with plain zarr."""

from __future__ import annotations

import contextlib
import functools
import io
import pickle
import shutil
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import zarr

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.ingest.h5 import open_source
from filtershift.store import convert as convert_module
from filtershift.synth import read_truth

#: 16 models of seed 5 include a fractals model (checked in the fixture); 2,048 filters in two chunks.
N, MODELS, SEED, CHUNK = 2048, 16, 5, 1024
V10, V01 = "Visual Category", "Datatype"


def _read_meta(path) -> pd.DataFrame:
    """The meta table of a source, read independently: pandas' HDF reader, or the CSV text under /meta via h5py."""
    with h5py.File(path, "r") as h:
        node = h["meta"]
        raw = node[()] if isinstance(node, h5py.Dataset) else None
    if raw is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.read_hdf(path, "meta").reset_index()
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(io.BytesIO(raw), **exact)


def _write_meta(src, dst, meta: pd.DataFrame, form="table"):
    """A copy of ``src`` whose /meta is ``meta``: a pandas table, or its CSV text in one of the forms h5py writes."""
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as h:
        del h["meta"]
        text = meta.to_csv(index=False)
        if form == "bytes":
            h["meta"] = text.encode()
        elif form == "str":
            h.create_dataset("meta", data=text, dtype=h5py.string_dtype("utf-8"))
        elif form == "fixed":
            h["meta"] = np.bytes_(text.encode())
        elif form == "uint8":
            h["meta"] = np.frombuffer(text.encode(), np.uint8)
        elif form == "opaque":
            h["meta"] = np.void(text.encode())
    if form == "table":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta.set_index(["model_id", "conv_depth", "conv_depth_norm"]).to_hdf(dst, key="meta", format="table")
    return dst


def _plain(path) -> dict:
    """What plain zarr reads of a store: manifest, weights, and both tables of the committed version."""
    g = zarr.open_group(str(path), mode="r")
    m = g.attrs["filtershift"]
    out = {"manifest": m, "weights": g["weights"][:]}
    for name in ("records", "models"):
        t = g[f"tables/v{m['version']}/{name}"]
        cols = {}
        for _, arr in t.arrays():
            cols[arr.attrs["column"]] = (arr[:], {k: v for k, v in arr.attrs.items() if k != "column"})
        out[name] = {c: cols[c] for c in t.attrs["columns"]}
    return out


def _same_table(a: dict, b: dict):
    assert list(a) == list(b)
    for col in a:
        np.testing.assert_array_equal(a[col][0], b[col][0], err_msg=col)
        assert a[col][0].dtype == b[col][0].dtype and a[col][1] == b[col][1], col


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The v1.0 reference and each variant as a source and its store (``name -> (h5, store)``)."""
    d = tmp_path_factory.mktemp("variants")
    ref = fs.synthesize(d / "v10.h5", n_filters=N, n_models=MODELS, seed=SEED)
    meta = _read_meta(ref)
    assert "fractals" in set(meta[V10]), "the plan must hold a fractals model"
    files = {
        "v1.0": ref,
        "csv": fs.synthesize(d / "csv.h5", n_filters=N, n_models=MODELS, seed=SEED, meta_format="csv"),
        "datatype": _write_meta(ref, d / "datatype.h5", meta.rename(columns={V10: V01})),
        "formula": _write_meta(ref, d / "formula.h5", meta.replace({V10: {"fractals": "formula"}})),
        "v0.1 csv": d / "v01csv.h5",
    }
    assert cli(["synth", str(files["v0.1 csv"]), "--filters", str(N), "--models", str(MODELS), "--seed", str(SEED),
                "--style", "v0.1", "--meta-format", "csv"]) == 0
    out = {}
    for k, v in files.items():
        log = io.StringIO()
        with contextlib.redirect_stdout(log), pytest.MonkeyPatch.context() as mp:
            if "csv" not in k:  # the CSV ones go through the isolated reader, which hands the new fields over
                mp.setattr(convert_module, "open_source", functools.partial(open_source, isolate=False))
            out[k] = (v, fs.convert(v, str(d / f"{k}.zarr"), chunk_filters=CHUNK), log.getvalue())
    return out


@pytest.fixture(scope="module")
def reference(variants):
    """The reference store as filtershift opens it."""
    return fs.open_store(variants["v1.0"][1])


@pytest.fixture
def in_process(monkeypatch):
    """convert reads the source in this process (the isolated reader is covered by the fixture's CSV variants)."""
    monkeypatch.setattr(convert_module, "open_source", functools.partial(open_source, isolate=False))


@pytest.mark.parametrize("name", ["csv", "datatype", "formula", "v0.1 csv"])
def test_variant_gives_the_v10_store(variants, reference, name):
    ref_h5, ref_store, _ = variants["v1.0"]
    src, store, _ = variants[name]
    ref, got = _plain(ref_store), _plain(store)
    # weights: the same bits, and those of the source's filter array (records are contiguous and in order)
    with h5py.File(ref_h5, "r") as h:
        source_bits = h["filters"][:].view(np.uint32)
    np.testing.assert_array_equal(got["weights"].view(np.uint32), source_bits)
    np.testing.assert_array_equal(got["weights"].view(np.uint32), ref["weights"].view(np.uint32))
    _same_table(got["records"], ref["records"])
    # models: the same table, except that the source's column name and raw labels are kept
    meta = _read_meta(src).drop_duplicates("model_id").set_index("model_id")
    column = V01 if V01 in meta.columns else V10
    raw = got["models"][column][0]
    assert raw.tolist() == meta.loc[got["models"]["model_id"][0], column].tolist()
    expected = dict(ref["models"])
    expected = {(column if c == V10 else c): v for c, v in expected.items()}
    if "formula" in set(meta[column]):
        expected[column] = (np.where(expected[column][0] == "fractals", "formula", expected[column][0]),
                            expected[column][1])
        assert "formula" in raw.tolist() and "fractals" not in raw.tolist()
    _same_table(got["models"], expected)
    # groupings: the v1.0 vocabulary, per filter the label of the reference meta's Visual Category
    assert got["manifest"]["vocabularies"] == ref["manifest"]["vocabularies"]
    ref_meta = _read_meta(ref_h5)
    starts = ref_meta["filter_ids"].str.split(":").str[0].astype(int).to_numpy()
    order = np.argsort(starts)
    labels = ref_meta[V10].to_numpy()[order]
    counts = ref_meta["filter_ids"].str.split(":").str[1].astype(int).to_numpy()[order] + 1 - starts[order]
    per_filter = np.repeat(labels, counts)
    ds = fs.open_store(store)
    np.testing.assert_array_equal(ds["visual_category"].values.astype(str), per_filter)
    assert ds["visual_category"].attrs["labels"] == sorted(set(labels))
    assert ds["visual_category"].attrs["column"] == column
    np.testing.assert_array_equal(ds["task"].values, reference["task"].values)
    if name == "v0.1 csv":
        assert fs.verify(store).ok


@pytest.mark.parametrize("name", ["formula", "v0.1 csv"])
def test_relabelling_is_recorded(variants, name):
    """The manifest says what was mapped: a label rule on the source's column and a provenance entry."""
    src, store, log = variants[name]
    m = _plain(store)["manifest"]
    column = V01 if name == "v0.1 csv" else V10
    assert {"column": column, "contains": "formula", "value": "fractals"} in m["label_rules"]
    entry = m["provenance"][-1]
    assert entry["relabelled"] == [{"column": column, "label": "formula", "grouped_as": "fractals", "models": 1}]
    assert entry["meta_format"] == ("csv" if "csv" in name else "table")
    ref = _plain(variants["v1.0"][1])["manifest"]
    assert "relabelled" not in ref["provenance"][-1]
    assert m["label_rules"] == ref["label_rules"] + [{"column": column, "contains": "formula", "value": "fractals"}]
    assert f"'formula' in '{column}' group as 'fractals'" in log
    assert variants["v1.0"][2] == variants["csv"][2] == ""


@pytest.mark.parametrize("form", ["bytes", "str", "fixed", "uint8", "opaque"])
def test_csv_in_every_dataset_form(variants, tmp_path, form):
    """CSV text as a bytes or UTF-8 string scalar, a fixed-length string, a byte array or an opaque scalar: the same
    tables as the pandas table it was written from."""
    ref_h5 = variants["v1.0"][0]
    src = _write_meta(ref_h5, tmp_path / f"{form}.h5", _read_meta(ref_h5), form)
    got, ref = open_source(src, isolate=False), open_source(ref_h5, isolate=False)
    assert got.meta_format == "csv" and ref.meta_format == "table"
    pd.testing.assert_frame_equal(got.models, ref.models)
    pd.testing.assert_frame_equal(got.records, ref.records)
    assert got.runs == ref.runs


def test_synth_v01_writes_each_variant(variants, tmp_path):
    """synth --style v0.1 --meta-format csv (the fixture's): CSV bytes under /meta, Datatype, formula, id lists; the
    truth groups the model under its v1.0 label and says how the file spells it. --meta-format fixed: formula too."""
    out = variants["v0.1 csv"][0]
    with h5py.File(out, "r") as h:
        assert isinstance(h["meta"], h5py.Dataset) and "filter" in h
        text = h["meta"][()].decode()
    meta = pd.read_csv(io.StringIO(text))
    assert V01 in meta.columns and V10 not in meta.columns
    assert "formula" in set(meta[V01]) and "fractals" not in set(meta[V01])
    assert all(s.startswith("[") for s in meta["filter_ids"])
    truth = read_truth(out)
    shift = truth["shifts"]["visual_category"]
    assert "fractals" in shift["groups"] and shift["labels_in_file"] == {"fractals": "formula"}
    fixed = fs.synthesize(tmp_path / "fixed.h5", n_filters=N, n_models=MODELS, seed=SEED, style="v0.1",
                          meta_format="fixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "formula" in set(pd.read_hdf(fixed, "meta")[V01])


def _store_snapshot(path) -> dict:
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _neither_float(src, meta, path):
    shutil.copy(src, path)
    with h5py.File(path, "a") as h:
        del h["meta"]
        h["meta"] = np.zeros((3, 4))


def _neither_group(src, meta, path):
    shutil.copy(src, path)
    with h5py.File(path, "a") as h:
        del h["meta"]
        h.create_group("meta").create_dataset("table", data=np.arange(5))


def _neither_pickle(src, meta, path):
    shutil.copy(src, path)
    with h5py.File(path, "a") as h:
        del h["meta"]
        h["meta"] = np.void(pickle.dumps(meta))


def _csv_missing_columns(src, meta, path):
    _write_meta(src, path, meta.drop(columns=["filter_ids", "conv_depth_norm"]), "bytes")


def _csv_not_a_table(src, meta, path):
    _write_meta(src, path, meta, "bytes")
    with h5py.File(path, "a") as h:
        del h["meta"]
        h["meta"] = b"just a sentence, not a meta table\n"


def _ambiguous(src, meta, path):
    """Datatype equals Visual Category except for model 3."""
    model_3 = meta["model_id"] == 3
    other = "natural" if meta.loc[model_3, V10].iloc[0] != "natural" else "satellite"
    _write_meta(src, path, meta.assign(**{V01: meta[V10].where(~model_3, other)}))


@pytest.mark.parametrize("make,match,remedy", [
    (_neither_float, "neither a pandas table nor CSV text", "re-save the meta table"),
    (_neither_group, "neither a pandas table nor CSV text", "re-save the meta table"),
    (_neither_pickle, "neither a pandas table nor CSV text", "re-save the meta table"),
    (_csv_missing_columns, r"lacks the column\(s\) \['conv_depth_norm', 'filter_ids'\]", "Store the complete"),
    (_csv_not_a_table, r"lacks the column\(s\)", "Store the complete"),
    (_ambiguous, "disagree for 1 model.*model_id 3", "Keep one of them"),
])
def test_bad_meta_is_refused_and_leaves_the_store(variants, in_process, tmp_path, make, match, remedy):
    """Each problem is an InputError naming it and the remedy; an existing store at the destination stays as it
    was, even with --overwrite."""
    ref_h5, ref_store, _ = variants["v1.0"]
    src = tmp_path / "bad.h5"
    make(ref_h5, _read_meta(ref_h5), src)
    dst = tmp_path / "db.zarr"
    shutil.copytree(ref_store, dst)
    before = _store_snapshot(dst)
    with pytest.raises(InputError, match=match) as err:
        fs.convert(src, str(dst), overwrite=True)
    message = str(err.value)
    assert "bad.h5" in message and remedy in message and "Error" not in message and "Traceback" not in message
    assert _store_snapshot(dst) == before


def test_both_columns_that_agree_are_accepted(variants, tmp_path):
    """Datatype next to Visual Category is fine when they agree (formula and fractals agree)."""
    ref_h5 = variants["v1.0"][0]
    meta = _read_meta(ref_h5)
    src = _write_meta(ref_h5, tmp_path / "both.h5",
                      meta.assign(**{V01: meta[V10].replace({"fractals": "formula"})}))
    s = open_source(src, isolate=False)
    assert s.category_column == V10
    assert s.relabelled == [{"column": V01, "label": "formula", "grouped_as": "fractals", "models": 1}]
