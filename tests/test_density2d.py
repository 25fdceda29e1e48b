"""The 2D density of components 0 and 1 (issues #14, #15): counted in pass 3 from the same projected block, so a
report reads the data three times; counts equal numpy.histogram2d of coefficients computed here; drawn as the
CNN-Filter-DB notebook draws it; its report.yaml keys validated."""

from __future__ import annotations

import json
import re

import dask
import numpy as np
import pandas as pd
import pytest

from filtershift.errors import InputError
from filtershift.report import build_report, figures, load_config
from filtershift.stats import density2d, fit_basis, record_stats
from filtershift.stats.histograms import Density2D
from filtershift.store import chunks
from filtershift.store.convert import convert
from filtershift.store.dataset import from_arrays, open_store
from filtershift.synth import synthesize

CHUNK = 4096
SPEC = {"groupings": ["task"], "metrics": ["kl_sym"], "bootstrap": {"n_boot": 0},
        "figures": {"formats": ["png"], "density_bins": 512, "density_min_count": 10}}


def coefficients(w: np.ndarray, basis) -> np.ndarray:
    """(filter / max|filter| - mean) @ components.T in plain numpy (all-zero filters stay zero)."""
    w = w.astype(np.float64)
    peak = np.abs(w).max(1, keepdims=True)
    scaled = np.divide(w, peak, out=np.zeros_like(w), where=peak > 0)
    return (scaled - basis.mean_) @ np.asarray(basis.components_).T


@pytest.fixture(scope="module")
def small():
    """Four records in three blocks (records cut by block edges), filters spread wider than the range below."""
    rng = np.random.default_rng(7)
    n = [900, 1300, 700, 1100]
    recs = pd.DataFrame({"model_id": [1, 1, 2, 2], "conv_depth": [0, 1, 0, 1], "conv_depth_norm": [0.0, 1.0] * 2,
                         "n": n})
    mods = pd.DataFrame({"model_id": [1, 2], "Task": ["a", "b"]})
    w = (rng.standard_normal((sum(n), 9)) * rng.lognormal(0, 1, (sum(n), 1))).astype(np.float32)
    return w, from_arrays(w, recs, mods, chunk_filters=1500)


def test_pass3_counts_the_2d_histogram_as_numpy_histogram2d(small):
    """The fused counts equal numpy.histogram2d (same linspace edges, last bin closed, values outside the range
    dropped) of the coefficients computed here, in the third pass and no other; the 1D counts do not change."""
    w, ds = small
    pair = Density2D((0, 1), 37, (-0.9, 0.6))       # narrower than the data on both sides of both axes
    with dask.config.set(scheduler="sync"):
        stats = record_stats(ds)
        basis = fit_basis(stats)
        h = stats.histograms(basis, 70, density=pair)
        assert stats.passes == 3
        d = density2d(stats, basis, components=(0, 1), bins=37, range=(-0.9, 0.6))
        assert stats.passes == 3                     # read from pass 3, no pass of its own
        plain = record_stats(ds)
        want_1d = plain.histograms(fit_basis(plain), 70)["counts"].values
    c = coefficients(w, basis)
    want = np.histogram2d(c[:, 0], c[:, 1], bins=37, range=[(-0.9, 0.6), (-0.9, 0.6)])[0].astype(np.int64)
    outside = ((c[:, :2] < -0.9) | (c[:, :2] > 0.6)).any(1).sum()
    assert 0 < outside < len(c) // 2
    assert d.dims == ("x", "y") and d.values.dtype == np.int64
    np.testing.assert_array_equal(d.values, want)
    np.testing.assert_array_equal(d.attrs["bin_edges"], np.linspace(-0.9, 0.6, 38))
    assert d.attrs["n_filters"] - int(d.values.sum()) == outside
    np.testing.assert_array_equal(h["counts"].values, want_1d)


def test_coarsening_is_histogram2d_with_fewer_bins(small):
    """min_count halves the bins while the filters per occupied bin average fewer than it; the result equals
    numpy.histogram2d with the bins used (the halved edges are numpy.linspace's own)."""
    w, ds = small
    with dask.config.set(scheduler="sync"):
        basis = fit_basis(ds)
        d = density2d(ds, basis, components=(1, 0), bins=512, range=(-3.3, 3.3), min_count=10)
    bins = d.attrs["bins"]
    assert d.attrs["bins_requested"] == 512 and 16 <= bins < 512 and 512 % bins == 0
    c = coefficients(w, basis)
    want = np.histogram2d(c[:, 1], c[:, 0], bins=bins, range=[(-3.3, 3.3)] * 2)[0]
    np.testing.assert_array_equal(d.values, want)
    assert d.values.sum() >= 10 * np.count_nonzero(d.values)
    finer = np.histogram2d(c[:, 1], c[:, 0], bins=2 * bins, range=[(-3.3, 3.3)] * 2)[0]
    assert bins == 16 or finer.sum() < 10 * np.count_nonzero(finer)


@pytest.fixture(scope="module")
def report(tmp_path_factory, monkeypatch_module):
    """A report of a 30,000-filter store in 8 chunks, counting every chunk of 'weights' read."""
    root = tmp_path_factory.mktemp("density")
    src = synthesize(root / "src.h5", n_filters=30_000, n_models=12, seed=2, format="h5")
    store = convert(src, root / "db.zarr", chunk_filters=CHUNK)
    reads = []
    original = chunks.ChunkReader.chunk

    def counted(self, i):
        if self.name == "weights":
            reads.append(i)
        return original(self, i)

    monkeypatch_module.setattr(chunks.ChunkReader, "chunk", counted)
    result = build_report(store, root / "out", SPEC, scheduler="threads")
    monkeypatch_module.setattr(chunks.ChunkReader, "chunk", original)
    return store, result, json.loads(result.results_json.read_text()), reads


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_report_reads_the_data_three_times(report):
    store, result, r, reads = report
    n_chunks = -(-30_000 // CHUNK)
    assert len(reads) == 3 * n_chunks and sorted(set(reads)) == list(range(n_chunks))
    assert r["run"]["passes"] == 3
    page = result.index_html.read_text()
    assert "<b>3</b>passes over the data" in page


def test_report_density_equals_numpy(report):
    """results.json's table is numpy.histogram2d of (component 0, component 1) over [-3.3, 3.3] with the bins
    used, which the caption states."""
    store, result, r, _ = report
    d = r["density2d"]
    ds = open_store(store)
    basis = fit_basis(ds)
    c = coefficients(ds["weights"].values, basis)
    bins = d["bins"]
    assert d["bins_requested"] == 512 and bins < 512 and d["components"] == [0, 1] and d["range"] == [-3.3, 3.3]
    want = np.histogram2d(c[:, 0], c[:, 1], bins=bins, range=[(-3.3, 3.3)] * 2)[0].astype(np.int64)
    t = pd.read_parquet(result.run_dir / d["table"])
    got = np.zeros((bins, bins), np.int64)
    got[t["x_bin"], t["y_bin"]] = t["count"]
    np.testing.assert_array_equal(got, want)
    assert d["total"] + d["outside"] == len(c) and d["outside"] == (np.abs(c[:, :2]) > 3.3).any(1).sum()
    assert d["vmin"] == 1e-5
    assert f"{bins} x {bins} bins (512 asked for" in result.index_html.read_text()


def test_density_figure_is_the_notebooks():
    """x = first component, counts / max on LogNorm(1e-5, 1), empty bins in the lowest colour (not white)."""
    counts = np.zeros((8, 8), np.int64)
    counts[6, 1] = 1000                        # x bin 6 (component 0), y bin 1 (component 1)
    counts[2, 5] = 1
    fig = figures.density(counts, np.linspace(-3.3, 3.3, 9), components=(0, 1))
    try:
        ax = fig.axes[0]
        im = ax.images[0]
        assert (im.norm.vmin, im.norm.vmax) == (1e-5, 1.0)
        assert ax.get_xlabel().endswith("component 0") and ax.get_ylabel().endswith("component 1")
        shown = np.ma.getdata(im.get_array())
        assert shown.shape == (8, 8) and shown[1, 6] == 1.0 and shown[5, 2] == 1e-3   # rows are y
        rgba = im.to_rgba(im.get_array())
        lowest = im.cmap(0.0)
        np.testing.assert_allclose(rgba[0, 0], lowest)                 # an empty bin
        assert tuple(rgba[0, 0][:3]) != (1.0, 1.0, 1.0)
        np.testing.assert_allclose(im.cmap(im.norm(1e-7)), lowest)    # under vmin
    finally:
        figures.plt.close(fig)


@pytest.mark.parametrize("figures_spec,needle", [
    ({"density_range": [3.3, -3.3]}, "'figures.density_range' must be [lower, upper]"),
    ({"density_range": [0.0]}, "'figures.density_range' must be [lower, upper]"),
    ({"density_range": "wide"}, "'figures.density_range' must be [lower, upper]"),
    ({"density_range": [-1, float("inf")]}, "'figures.density_range' must be [lower, upper]"),
    ({"density_vmin": 0}, "'figures.density_vmin' must be a number between"),
    ({"density_vmin": 2}, "'figures.density_vmin' must be a number between"),
    ({"density_min_count": -1}, "'figures.density_min_count' must be a number between"),
])
def test_density_keys_are_validated(figures_spec, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        load_config({"figures": figures_spec})


def test_density_keys_defaults_and_values():
    spec = load_config({"figures": {"density_range": [-2, 2.5], "density_vmin": 1e-4, "density_min_count": 0}})
    assert spec["figures"]["density_range"] == [-2.0, 2.5]
    assert spec["figures"]["density_vmin"] == 1e-4 and spec["figures"]["density_min_count"] == 0
    default = load_config({})["figures"]
    assert (default["density_range"], default["density_vmin"], default["density_bins"]) == ([-3.3, 3.3], 1e-5, 512)


def test_density2d_refuses_a_bad_range(small):
    _, ds = small
    with pytest.raises(InputError, match="range must be two finite numbers"):
        density2d(ds, components=(0, 1), bins=8, range=(1.0, 1.0))
