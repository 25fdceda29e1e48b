"""The synthetic data generator: layout of the written files, determinism, and the planted truth, each checked
with plain h5py/pandas/numpy computations written here."""

from __future__ import annotations

import json
import tracemalloc
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

from filtershift import synth
from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.store.format import Location, read_table
from filtershift.synth import read_truth, synthesize, truth_path

N = 300_000


def read_meta(path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.read_hdf(path, "meta")


def read_filters(path) -> np.ndarray:
    with h5py.File(path, "r") as h:
        key = "filters" if "filters" in h else "filter"
        return h[key][:].reshape(-1, 9)


def record_ids(meta: pd.DataFrame) -> list[np.ndarray]:
    """Each meta row's filter ids, parsed here: 'a:b' with an inclusive end, or a list."""
    out = []
    for v in meta["filter_ids"]:
        if isinstance(v, str):
            a, b = (int(x) for x in v.split(":"))
            out.append(np.arange(a, b + 1))
        else:
            out.append(np.asarray(v, dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "db.h5"
    synthesize(path, n_filters=N, n_models=40, seed=7)
    return path


def test_counts_and_v10_ranges_tile_the_filters(base):
    meta, w, truth = read_meta(base), read_filters(base), read_truth(base)
    assert w.shape == (N, 9) and w.dtype == np.float32
    assert truth["n_filters"] == N and truth["n_models"] == 40 == meta.index.get_level_values(0).nunique()
    assert truth["n_records"] == len(meta)
    assert list(meta.index.names) == ["model_id", "conv_depth", "conv_depth_norm"]
    bounds = np.array([[int(x) for x in s.split(":")] for s in meta["filter_ids"]])
    bounds = bounds[np.argsort(bounds[:, 0])]
    assert bounds[0, 0] == 0 and bounds[-1, 1] == N - 1
    np.testing.assert_array_equal(bounds[1:, 0], bounds[:-1, 1] + 1)
    assert (meta.groupby(level=0)["(3, 3) filters"].first()
            == meta.assign(n=bounds[:, 1] - bounds[:, 0] + 1).groupby(level=0)["n"].sum()).all()
    depth = meta.reset_index()
    per_model = depth.groupby("model_id")["conv_depth"].agg(["min", "max", "count"])
    assert (per_model["min"] == 0).all() and (per_model["max"] == per_model["count"] - 1).all()
    expected = depth["conv_depth"] / (depth.groupby("model_id")["conv_depth"].transform("max").clip(lower=1))
    np.testing.assert_allclose(depth["conv_depth_norm"], expected)


def test_meta_columns_and_label_noise(base):
    meta = read_meta(base)
    for col in ("model", "producer", "op_set", "depth", "Name", "Paper", "Pretraining-Dataset", "Training-Dataset",
                "Visual Category", "Task", "Accessible", "Dataset URL", "total_filters", "3x3_filter_share",
                "(3, 3) filters", "(1, 1) filters", "(5, 5) filters", "Conv", "Relu", "Add", synth.EXTRA_COLUMN):
        assert col in meta.columns, col
    models = meta.groupby(level=0).nunique(dropna=False)
    assert (models.drop(columns="filter_ids") == 1).all().all()  # model-level columns repeat on every row
    assert meta["Pretraining-Dataset"].isna().any() and meta["Pretraining-Dataset"].notna().any()
    seg = {t for t in meta["Task"].unique() if "Segmentation" in t}
    assert seg and seg <= {"Segmentation", "Semantic Segmentation", "Segmentation (instance)"}
    share = meta["(3, 3) filters"] / meta["total_filters"]
    np.testing.assert_allclose(meta["3x3_filter_share"], share)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, base):
    again = tmp_path / "again.h5"
    synthesize(again, n_filters=N, n_models=40, seed=7)
    np.testing.assert_array_equal(read_filters(again), read_filters(base))
    pd.testing.assert_frame_equal(read_meta(again), read_meta(base))
    assert truth_path(again).read_bytes() == truth_path(base).read_bytes()
    other = tmp_path / "other.h5"
    synthesize(other, n_filters=N, n_models=40, seed=8)
    assert not np.array_equal(read_filters(other), read_filters(base))
    assert json.loads(truth_path(other).read_text())["seed"] == 8


def test_planted_sparsity_recomputed(base):
    meta, w, truth = read_meta(base), read_filters(base), read_truth(base)
    ids = dict(zip(zip(meta.index.get_level_values(0), meta.index.get_level_values(1)), record_ids(meta)))
    sparse = [d for d in truth["degenerate"] if d["kind"] == "sparse"]
    assert sparse
    zero = ~w.any(axis=1)
    for d in sparse:
        rows = ids[(d["model_id"], d["conv_depth"])]
        assert len(rows) == d["n"]
        assert zero[rows].sum() / len(rows) == d["sparsity"]
    planted = sum(d["n_zero"] for d in sparse)
    assert zero.sum() == planted  # no other record has all-zero filters
    assert planted < 0.01 * N


def variance_entropy(x: np.ndarray) -> float:
    """Base-10 entropy of the shares of the covariance eigenvalues of a record's filters (0: one direction)."""
    vals = np.clip(np.linalg.eigvalsh(np.cov(x.astype(np.float64).T)), 0, None)
    p = vals / vals.sum()
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum())


def test_near_duplicate_records_have_low_variance_entropy(base):
    meta, w, truth = read_meta(base), read_filters(base), read_truth(base)
    ids = dict(zip(zip(meta.index.get_level_values(0), meta.index.get_level_values(1)), record_ids(meta)))
    dups = [d for d in truth["degenerate"] if d["kind"] == "near_duplicate"]
    assert dups
    for d in dups:
        x = w[ids[(d["model_id"], d["conv_depth"])]]
        assert variance_entropy(x) < 0.05
        direction = x.mean(0) / np.linalg.norm(x.mean(0))
        cosine = (x @ direction) / np.linalg.norm(x, axis=1)
        assert cosine.min() > 0.99
    planted = {(d["model_id"], d["conv_depth"]) for d in truth["degenerate"]}
    normal = [k for k in ids if k not in planted and len(ids[k]) >= 50]
    assert min(variance_entropy(w[ids[k]]) for k in normal) > 0.3


def sym_kl_by_group(w, labels, reference, normalise):
    """Sum over 9 principal components of a symmetric KL between 40-bin histograms of group and reference."""
    keep = w.any(axis=1)
    x, labels = w[keep].astype(np.float64), labels[keep]
    if normalise:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(x[::7], full_matrices=False)
    c = x @ vt.T
    out = {}
    for g in np.unique(labels):
        if g == reference:
            continue
        total = 0.0
        for k in range(9):
            edges = np.linspace(*np.percentile(c[:, k], [0.5, 99.5]), 41)
            p = np.histogram(c[labels == g, k], edges)[0] + 0.5
            q = np.histogram(c[labels == reference, k], edges)[0] + 0.5
            p, q = p / p.sum(), q / q.sum()
            total += float(np.sum((p - q) * np.log(p / q)))
        out[g] = total
    return out


@pytest.mark.parametrize("normalise", [True, False])
def test_planted_shift_order_recovered(base, normalise):
    meta, w, truth = read_meta(base), read_filters(base), read_truth(base)
    labels = {"task": meta["Task"].map(lambda t: "Segmentation" if "Segmentation" in t else t),
              "visual_category": meta["Visual Category"]}
    ids = record_ids(meta)
    for key, column in labels.items():
        per_filter = np.empty(N, dtype=object)
        for rows, label in zip(ids, column):
            per_filter[rows] = label
        planted = truth["shifts"][key]
        assert len(planted["order"]) >= 4
        kl = sym_kl_by_group(w, per_filter, planted["reference"], normalise)
        assert sorted(kl, key=kl.get) == planted["order"], (key, kl)


def test_depth_shrinks_magnitude(base):
    meta, w = read_meta(base), read_filters(base)
    norm = np.linalg.norm(w, axis=1)
    depth = np.empty(N)
    for rows, d in zip(record_ids(meta), meta.index.get_level_values("conv_depth_norm")):
        depth[rows] = d
    live = norm > 0
    shallow = np.median(norm[live & (depth <= 0.25)])
    deep = np.median(norm[live & (depth >= 0.75)])
    assert deep < 0.85 * shallow


@pytest.mark.parametrize("style", ["v1.0", "v0.1"])
def test_shuffled_records_hold_the_same_filters(tmp_path, style):
    fmt = "table" if style == "v1.0" else "fixed"
    plain, shuffled = tmp_path / "plain.h5", tmp_path / "shuffled.h5"
    synthesize(plain, n_filters=20_000, n_models=6, seed=3, style=style, meta_format=fmt)
    synthesize(shuffled, n_filters=20_000, n_models=6, seed=3, style=style, meta_format=fmt, shuffle_records=True)
    mp, ms = read_meta(plain), read_meta(shuffled)
    wp, ws = read_filters(plain), read_filters(shuffled)
    ip, is_ = record_ids(mp), record_ids(ms)
    assert mp.index.equals(ms.index)
    assert any(not np.array_equal(a, b) for a, b in zip(ip, is_))
    all_ids = np.sort(np.concatenate(is_))
    np.testing.assert_array_equal(all_ids, np.arange(20_000))
    for a, b in zip(ip, is_):
        np.testing.assert_array_equal(wp[a], ws[np.sort(b)])
    if style == "v0.1":
        assert any(len(b) > 1 and np.any(np.diff(b) != 1) for b in is_)


def test_v01_style_lists_fixed_format(tmp_path):
    path = tmp_path / "v01.h5"
    synthesize(path, n_filters=5_000, n_models=4, seed=1, style="v0.1", meta_format="fixed")
    with h5py.File(path, "r") as h:
        assert "filter" in h and "filters" not in h
    meta = read_meta(path)
    assert "Datatype" in meta.columns and "Visual Category" not in meta.columns
    assert all(isinstance(v, list) for v in meta["filter_ids"])
    np.testing.assert_array_equal(np.sort(np.concatenate(record_ids(meta))), np.arange(5_000))
    assert read_truth(path)["shifts"]["visual_category"]["column"] == "Datatype"


@pytest.mark.parametrize("meta_format", ["table", "fixed"])
def test_both_meta_formats_read_back_alike(tmp_path, meta_format):
    path = tmp_path / f"{meta_format}.h5"
    synthesize(path, n_filters=5_000, n_models=4, seed=2, meta_format=meta_format)
    with h5py.File(path, "r") as h:
        assert ("table" in h["meta"]) == (meta_format == "table")
    reference = tmp_path / "ref.h5"
    synthesize(reference, n_filters=5_000, n_models=4, seed=2, meta_format="table" if meta_format == "fixed"
               else "fixed")
    pd.testing.assert_frame_equal(read_meta(path), read_meta(reference), check_dtype=False)


def test_layout_and_dtype(tmp_path):
    flat, cube = tmp_path / "flat.h5", tmp_path / "cube.h5"
    synthesize(flat, n_filters=5_000, n_models=4, seed=4)
    synthesize(cube, n_filters=5_000, n_models=4, seed=4, layout="3x3", dtype="float16")
    with h5py.File(cube, "r") as h:
        assert h["filters"].shape == (5_000, 3, 3) and h["filters"].dtype == np.float16
    np.testing.assert_array_equal(read_filters(cube), read_filters(flat).astype(np.float16))


def peak_bytes(path, n):
    tracemalloc.start()
    try:
        synthesize(path, n_filters=n, n_models=40, seed=5)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_bounded(tmp_path):
    n = 5_000_000
    small = peak_bytes(tmp_path / "small.h5", n // 5)
    big = peak_bytes(tmp_path / "big.h5", n)
    assert big < 0.2 * n * 9 * 4, big
    assert big < 1.2 * small, (small, big)
    with h5py.File(tmp_path / "big.h5", "r") as h:
        assert h["filters"].shape == (n, 9)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(*args):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate_block", boom)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "x.h5", n_filters=5_000, n_models=4)
    assert calls and list(tmp_path.iterdir()) == []


def test_parameter_errors(tmp_path):
    with pytest.raises(InputError, match="n_filters"):
        synthesize(tmp_path / "a.h5", n_filters=100, n_models=40)
    with pytest.raises(InputError, match="meta_format='fixed'"):
        synthesize(tmp_path / "a.h5", n_filters=5_000, n_models=4, style="v0.1")
    with pytest.raises(InputError, match="layout"):
        synthesize(tmp_path / "a.h5", n_filters=5_000, n_models=4, layout="square")
    synthesize(tmp_path / "a.h5", n_filters=5_000, n_models=4)
    with pytest.raises(InputError, match="overwrite"):
        synthesize(tmp_path / "a.h5", n_filters=5_000, n_models=4)
    with pytest.raises(InputError, match="truth"):
        read_truth(tmp_path / "missing.h5")


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.h5"
    assert main(["synth", str(out), "--filters", "6000", "--models", "5", "--seed", "9", "--style", "v0.1",
                 "--shuffle-records"]) == 0
    assert "6,000 filters" in capsys.readouterr().out
    assert read_truth(out)["settings"]["meta_format"] == "fixed"
    assert len(read_filters(out)) == 6000
    assert main(["synth", str(out), "--filters", "6000", "--models", "5"]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_zarr_output_matches_h5(tmp_path):
    import zarr

    h5, store = tmp_path / "db.h5", tmp_path / "db.zarr"
    synthesize(h5, n_filters=8_000, n_models=5, seed=6, meta_format="fixed", shuffle_records=True)
    synthesize(store, n_filters=8_000, n_models=5, seed=6, meta_format="fixed", shuffle_records=True,
               format="zarr")
    assert not any(p.name.endswith(".h5") for p in tmp_path.iterdir() if p != h5)
    g = zarr.open_group(store, mode="r")
    m = g.attrs["filtershift"]
    records = read_table(Location.of(store), "records", m["version"])
    weights = g["weights"][: m["n_filters"]]
    w = read_filters(h5)
    for r in records.itertuples():
        np.testing.assert_array_equal(weights[r.start:r.stop], w[r.source_start:r.source_start + r.n])
    assert read_truth(store) == read_truth(h5) | {"settings": read_truth(store)["settings"]}
