"""The scheduled report: results.json equals the engine's API computed here, every referenced file exists, the
page renders in headless Chromium without errors, reuse, atomic publishing under SIGKILL and failures, config
validation and exit codes, safe file names."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.report import build_report, load_config
from filtershift.report.publish import inside, safe_name
from filtershift.stats import density2d, distributions, drift, drift_ci, fit_basis
from filtershift.stats.quality import layer_quality
from filtershift.store.dataset import open_store
from filtershift.synth import synthesize

SPEC = {
    "groupings": ["task", "visual_category", "depth", "model"],
    "metrics": ["kl_sym", "js", "w1"],
    "thresholds": {"min_filters": 1000, "min_models": 2, "sparsity_eps": 0.01},
    "bootstrap": {"n_boot": 20, "seed": 3, "level": 0.9},
    "figures": {"formats": ["png", "svg"], "density_bins": 64, "max_groups": 10, "top_k": 6},
}
#: A cheap spec for the runs that only exercise publishing.
SMALL = {"groupings": ["task"], "metrics": ["kl_sym"], "bootstrap": {"n_boot": 0},
         "figures": {"formats": ["png"], "density_bins": 0}}
SHOTS = os.environ.get("FILTERSHIFT_REPORT_SCREENSHOTS")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "db.zarr"
    synthesize(path, n_filters=20_000, n_models=12, seed=1, format="zarr")
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A small report of a store converted from a CNN-Filter-DB-style HDF5 file (provenance kind ``h5``, not
    ``synth``), its basis fitted on a selection."""
    from filtershift.store.convert import convert

    root = tmp_path_factory.mktemp("converted")
    src = synthesize(root / "dataset.h5", n_filters=5_000, n_models=6, seed=2)
    convert(src, root / "db.zarr")
    spec = {**SMALL, "where": "task != 'Generative'", "basis": "selection"}
    result = build_report(root / "db.zarr", root / "out", spec, scheduler="threads")
    return result, json.loads(result.results_json.read_text())


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    result = build_report(store, out, SPEC, scheduler="threads")
    return result, json.loads(result.results_json.read_text())


@pytest.fixture(scope="module")
def drawn(store, tmp_path_factory):
    """The figure jobs of a report of ``store`` with SPEC (each figure's plot function and arguments)."""
    from filtershift.report import render

    jobs = []
    real = render.render

    def spy(todo, directory, on_done=None):
        jobs.extend(todo)
        return real(todo, directory, on_done)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(render, "render", spy)
        mp.setenv("FILTERSHIFT_FIGURE_PROCESSES", "0")
        build_report(store, tmp_path_factory.mktemp("drawn"), {**SPEC, "figures": {**SPEC["figures"],
                                                                                   "formats": ["png"]}},
                     scheduler="threads")
    return jobs


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def close(got, want):
    """results.json stores NaN as null."""
    got = np.array([np.nan if v is None else v for v in np.ravel(np.array(got, dtype=object))], dtype=np.float64)
    np.testing.assert_allclose(got, np.ravel(np.asarray(want, np.float64)), rtol=1e-12, atol=0, equal_nan=True)


# -- the numbers -----------------------------------------------------------------------------------------------------


def test_results_equal_the_engine(store, built):
    result, r = built
    assert result.status == "built" and r["schema"] == "filtershift-report/1"
    ds = open_store(store)
    basis = fit_basis(ds)
    close(r["basis"]["mean"], basis.mean_)
    close(r["basis"]["components"], basis.components_)
    close(r["basis"]["explained_variance_ratio"], basis.explained_variance_ratio_)
    w = ds["weights"].values.astype(np.float64)
    peak = np.abs(w).max(1, keepdims=True)
    cov = np.cov(np.divide(w, peak, out=np.zeros_like(w), where=peak > 0), rowvar=False)  # zero filters stay zero
    np.testing.assert_allclose(np.array(r["basis"]["covariance"]), cov, rtol=1e-6, atol=1e-9)
    run = result.run_dir
    for name in SPEC["groupings"]:
        g = r["groupings"][name]
        dist = distributions(ds, basis, by=name, bins=70, min_filters=1000, min_models=2)
        assert g["labels"] == [str(x) for x in dist["group"].values]
        assert g["n_filters"] == dist["n_filters"].values.tolist()
        assert g["n_models"] == dist["n_models"].values.tolist()
        assert g["small"] == dist["small"].values.tolist()
        hist = pd.read_parquet(run / g["histograms_table"])
        counts = hist.pivot_table(index=["group", "component"], columns="bin", values="count")
        for i, label in enumerate(g["labels"]):
            np.testing.assert_array_equal(counts.loc[label].to_numpy(), dist["counts"].values[i])
        for metric in SPEC["metrics"]:
            want = drift(dist, metric).values
            entry = g["metrics"][metric]
            if "matrix" in entry:
                close(entry["matrix"], want)
            else:
                t = pd.read_parquet(run / entry["table"])
                got = t.pivot(index="group_a", columns="group_b", values="value").loc[g["labels"], g["labels"]]
                close(got.to_numpy(), want)
            ci = drift_ci(dist, metric, n_boot=20, seed=3, level=0.9)
            close(entry["lower"], ci["lower"].values)
            close(entry["upper"], ci["upper"].values)
            off = np.where(np.eye(len(want), dtype=bool), np.nan, want)
            close(g["mean_drift"][metric], np.nanmean(off, axis=1))
        mean0 = np.nanmean(np.where(np.eye(len(g["labels"]), dtype=bool), np.nan, drift(dist, "kl_sym").values), 1)
        assert np.all(np.diff(mean0[g["order"]]) >= 0), "matrices are sorted by increasing mean drift"
        assert sorted(g["order"]) == list(range(len(g["labels"])))
    d = density2d(ds, basis, components=(0, 1), bins=64, range=(-3.3, 3.3), min_count=10)
    t = pd.read_parquet(run / r["density2d"]["table"])
    bins = r["density2d"]["bins"]
    dense = np.zeros((bins, bins), np.int64)
    dense[t["x_bin"], t["y_bin"]] = t["count"]
    np.testing.assert_array_equal(dense, d.values)
    assert r["density2d"]["total"] == ds.sizes["filter"]


def test_large_grouping_is_clustered_and_top_k(built):
    _, r = built
    g = r["groupings"]["model"]
    assert g["size"] == 12 > SPEC["figures"]["max_groups"] and g["display"] == "clustered"
    assert sorted(g["cluster_order"]) == list(range(12))
    md = np.array([np.nan if v is None else v for v in g["mean_drift"]["kl_sym"]])
    assert g["top"] == list(np.argsort(-md, kind="stable")[:SPEC["figures"]["top_k"]])
    assert "g-model" in built[0].index_html.read_text()
    assert r["groupings"]["depth"]["display"] == "matrix"


def test_models_are_shown_by_name_and_never_small_for_being_one_model(store, built):
    """The per-model grouping names each model as ``model (Task, Training-Dataset)`` from the models table (read
    here with plain xarray), in results.json and in the drift tables; its small flags come from filters only."""
    result, r = built
    g = r["groupings"]["model"]
    table = xr.open_zarr(store, group="tables/v1/models", consolidated=False)
    models = {c: table[c].values for c in ("model_id", "model", "Task", "Training-Dataset")}
    want = {str(i): f"{m} ({t}, {d})" for i, m, t, d in zip(*models.values())}
    assert g["names"] == [want[label] for label in g["labels"]]
    n_filters = np.array(g["n_filters"])
    assert g["small"] == (n_filters < SPEC["thresholds"]["min_filters"]).tolist()
    t = pd.read_parquet(result.run_dir / g["metrics"]["kl_sym"]["table"])
    assert set(t["name_a"]) == set(want.values())
    assert r["groupings"]["task"]["names"] is None
    # the most degenerated layers: the model's name, its conv depth and the criteria that flag the layer
    layers = layer_quality(open_store(store), sparsity_eps=0.01).set_index(["model_id", "conv_depth"])
    words = {"sparse": "sparse", "low_diversity": "low diversity", "random_like": "random-like"}
    worst = r["quality"]["most_degenerated_layers"]
    assert worst
    for row in worst:
        assert row["model"] == want[str(row["model_id"])]
        flags = layers.loc[(row["model_id"], row["conv_depth"])]
        assert row["reason"] == ", ".join(w for c, w in words.items() if flags[c])
    assert all(row["model"] == want[str(row["model_id"])] for row in r["quality"]["most_degenerated_models"])


def test_every_csv_table_holds_its_parquet_table(built):
    """The CSV copy of each table (written by pyarrow) reads back, with pandas, as the Parquet table: the same
    columns, values and missing values."""
    result, r = built
    assert len(r["tables"]) >= 5
    for name, files in r["tables"].items():
        want = pd.read_parquet(result.run_dir / files["parquet"])
        got = pd.read_csv(result.run_dir / files["csv"], keep_default_na=False, na_values=[""])
        assert list(got.columns) == list(want.columns), name
        for col in want.columns:
            w, g = want[col], got[col]
            if pd.api.types.is_numeric_dtype(w) and not pd.api.types.is_bool_dtype(w):
                np.testing.assert_array_equal(g.to_numpy(np.float64), w.to_numpy(np.float64, na_value=np.nan),
                                              err_msg=f"{name}.{col}")
            else:
                assert [_cell(x) for x in g] == [_cell(x) for x in w], f"{name}.{col}"


def _cell(x):
    """A text cell as CSV keeps it: missing and empty are one (a CSV cannot tell them apart), booleans any case."""
    return None if pd.isna(x) or x == "" else str(x).lower()


def test_quality_numbers(store, built):
    result, r = built
    want = layer_quality(open_store(store), sparsity_eps=0.01)
    got = pd.read_parquet(result.run_dir / r["tables"]["layer_quality"]["parquet"])
    for col in ("sparsity", "variance_entropy_norm", "variance_entropy_clean_norm", "n"):
        np.testing.assert_allclose(got[col].to_numpy(np.float64), want[col].to_numpy(np.float64), equal_nan=True)
    q = r["quality"]
    assert q["n_layers"] == len(want) and q["n_degenerated"] == int(want["degenerated"].sum())
    for row in q["by"]["task"]:
        sel = want[want["task"].astype(str) == row["group"]]
        assert row["layers"] == len(sel) and row["filters"] == int(sel["n"].sum())
        w = sel["n"].to_numpy(np.float64)
        v = sel["sparsity"].to_numpy(np.float64)
        assert row["sparsity mean"] == pytest.approx(np.sum(v * w) / np.sum(w), rel=1e-12)
        assert row["sparsity median"] == pytest.approx(np.median(v), rel=1e-12)
        assert row["degenerated share"] == pytest.approx(sel["degenerated"].mean())
    worst = q["most_degenerated_layers"]
    scores = [x["degeneration"] for x in worst]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(np.nanmax(want["degeneration"].to_numpy(np.float64)))


# -- the page --------------------------------------------------------------------------------------------------------


def test_every_reference_exists_and_stays_inside(built):
    result, r = built
    page = result.index_html.read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert refs and not [x for x in refs if "://" in x or x.startswith("/")], "only relative, local links"
    for ref in refs:
        path = (result.run_dir / ref).resolve()
        assert path.is_file(), ref
        assert result.run_dir.resolve() in path.parents
    for key, files in r["figures"].items():
        for f in files.values():
            assert (result.run_dir / f).is_file(), key
            assert f'src="{f}"' in page or f'href="{f}"' in page, f"{key} not shown"
    assert len(re.findall(r"<img ", page)) == len(r["figures"])
    for key in ("key", "basis.eigenimages", "basis.covariance", "grouping.task.views", "grouping.depth.views",
                "grouping.task.intervals", "grouping.task.eigenimages", "grouping.task.ridges",
                "grouping.model.overview", "grouping.model.top", "grouping.model.boxes", "density2d", "quality"):
        assert key in r["figures"], key
    # the key figure's groupings have their first-metric matrix there only; the others' views are one figure
    for gone in ("grouping.task.drift.kl_sym", "grouping.depth.drift.kl_sym.unsorted", "grouping.task.drift.js",
                 "grouping.task.boxes"):
        assert gone not in r["figures"], gone
    assert page.index('id="key"') < page.index('id="basis"') and page.index('id="overview"') < page.index('id="key"')
    for label, n in zip(r["groupings"]["task"]["labels"], r["groupings"]["task"]["n_filters"]):
        assert f"<td>{label}</td>" in page and f"{n:,}" in page
    history = result.history_html.read_text()
    assert f'href="runs/{result.run}/index.html"' in history and "<svg" in history


def test_group_eigenimages_are_aligned_to_the_global_basis(store, built, drawn):
    """results.json's order/signs/cosines/tied of every grouping's bases equal a plain numpy recomputation from its
    own group_bases components and the global basis: the permutation of largest total |cosine| (all 9! tried),
    signs of positive cosine, eigenvalues within tie_rtol; the figure draws the aligned components and their
    shares."""
    import itertools

    _, r = built
    perms = np.array(list(itertools.permutations(range(9))))
    base = np.array(r["basis"]["components"], np.float64)
    aligned = 0
    for name, g in r["groupings"].items():
        if "group_bases" not in g:
            continue
        gb = g["group_bases"]
        assert gb["tie_rtol"] == 0.05
        job = next(j for j in drawn if j.key == f"grouping.{name}.eigenimages")
        for i, valid in enumerate(gb["valid"]):
            if not valid:
                assert gb["order"][i] is None and gb["tied"][i] is None
                continue
            comps = np.array(gb["components"][i], np.float64)
            ratio = np.array(gb["explained_variance_ratio"][i], np.float64)
            cos = base @ comps.T
            best = perms[np.argmax(np.abs(cos)[np.arange(9), perms].sum(1))]
            assert gb["order"][i] == best.tolist(), (name, i)
            matched = cos[np.arange(9), best]
            assert gb["signs"][i] == np.sign(matched).astype(int).tolist()
            close(gb["cosines"][i], np.abs(matched))
            tied = [any(abs(ratio[b] - ratio[o]) <= 0.05 * max(ratio[b], ratio[o]) for o in range(9) if o != b)
                    for b in best]
            assert gb["tied"][i] == tied
            want = np.sign(matched)[:, None] * comps[best]
            np.testing.assert_allclose(job.kwargs["alignment"]["aligned"][i], want, rtol=0, atol=1e-12)
            np.testing.assert_allclose(job.kwargs["alignment"]["ratio"][i], ratio[best], rtol=1e-12)
            aligned += 1
    assert aligned >= 5
    ridge = next(j for j in drawn if j.key == "grouping.task.ridges")
    assert list(ridge.kwargs["components"]) == list(range(9)), "all 9 components, as the notebook"
    assert ridge.kwargs["kde"].attrs["data"] == "fine_counts"


def test_key_figure_shares_one_colour_scale(built, drawn):
    """Task, visual category and depth on ONE colour scale: results.json's vmin/vmax equal the range of the three
    matrices (computed here from their numbers), the figure's three matrices use exactly that norm, one colour bar."""
    _, r = built
    key = r["key_figure"]
    assert key["groupings"] == ["task", "visual_category", "depth"] and key["metric"] == "kl_sym"
    assert key["unit"] == "nats"
    mats = [np.array(r["groupings"][n]["metrics"]["kl_sym"]["matrix"], dtype=np.float64) for n in key["groupings"]]
    assert key["vmin"] == 0.0 and key["vmax"] == pytest.approx(max(np.nanmax(m) for m in mats), rel=1e-12)
    for n, m in zip(key["groupings"], mats):
        upper = m[np.triu_indices(len(m), 1)]
        assert key["pairwise"][n]["mean"] == pytest.approx(np.nanmean(upper), rel=1e-12)
        assert key["pairwise"][n]["n_pairs"] == int(np.isfinite(upper).sum())
    job = next(j for j in drawn if j.key == "key")
    fig = job.plot(**job.kwargs)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 3
    assert {(im.norm.vmin, im.norm.vmax) for im in images} == {(key["vmin"], key["vmax"])}
    bars = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]
    assert len(bars) == 1 and "nats" in bars[0].get_ylabel()
    for im, m in zip(images, mats):
        np.testing.assert_allclose(np.sort(np.ma.filled(im.get_array(), np.nan).ravel()), np.sort(m.ravel()),
                                   equal_nan=True)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_no_figure_reaches_outside_its_canvas(drawn):
    """Every figure of the report fits its canvas as laid out (margins from its labels), so one draw per file
    suffices: no tight-box pass."""
    from filtershift.report import figures

    assert len(drawn) > 15
    out = {}
    for job in drawn:
        fig = job.plot(**job.kwargs)
        fig.set_dpi(job.dpi)
        fig.draw_without_rendering()
        out[job.key] = figures.overflow(fig)
        figures.plt.close(fig)
    assert {k: v for k, v in out.items() if v > 0} == {}


def test_a_figure_outside_its_canvas_is_still_saved_whole():
    """The safety net: a figure whose label reaches outside the canvas is saved cropped to its tight box."""
    import struct

    from filtershift.report import figures

    fig = figures.plt.figure(figsize=(2.0, 1.0))
    ax = fig.add_axes((0.0, 0.2, 1.0, 0.7))
    ax.set_yticks([0.5], ["a rather long label that starts left of the canvas"])
    assert figures.overflow(fig) > 1.0
    png = figures.encode(fig, ["png"], dpi=100)["png"]
    width = struct.unpack(">I", png[16:20])[0]
    assert width > 300


def test_page_renders_in_chromium(built, tmp_path):
    result, _ = built
    shot = Path(SHOTS) / "report.png" if SHOTS else tmp_path / "report.png"
    state = inspect_page(result.index_html, shot)
    assert state["errors"] == []
    assert state["title"] == "filtershift report"
    n_img = len(re.findall(r"<img ", result.index_html.read_text()))
    assert len(state["images"]) == n_img > 10
    broken = [i["src"] for i in state["images"] if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert shot.stat().st_size > 10_000
    hist = inspect_page(result.history_html, Path(SHOTS) / "history.png" if SHOTS else tmp_path / "history.png",
                        height=900)
    assert hist["errors"] == []


def test_page_reads_top_down_at_1400_by_900(built):
    """At a 1400 x 900 viewport the key figure starts above the fold, nothing overflows sideways (also with every
    ``<details>`` open), every image loads, and the folded parts say in their summary what they hold."""
    result, r = built
    state = inspect_page(result.index_html, Path(SHOTS) / "report-1400x900.png" if SHOTS else None, width=1400,
                         height=900)
    assert state["errors"] == []
    assert 0 <= state["key_top"] < 900, state["key_top"]
    assert state["scroll_width"] <= 1400 and state["scroll_width_open"] <= 1400
    assert [i["src"] for i in state["images"] if not (i["complete"] and i["width"] > 0)] == []
    summaries = [d["summary"] for d in state["details"]]
    assert len(summaries) > 10 and all(len(t) > 8 for t in summaries)
    assert not any(d["open"] for d in state["details"])
    for what in ("Filters and models by task", "Provenance", "Parameters of this report", " views",
                 "Bootstrap intervals", "Eigenimages per group", "Coefficient distributions", "Quality by",
                 "Most degenerated layers"):
        assert any(what in t for t in summaries), what
    page = result.index_html.read_text()
    assert "<script" not in page
    # the first metric's matrices and the key figure stay open: outside every <details>
    outside = re.sub(r"<details>.*?</details>", "", page, flags=re.S)
    assert 'id="key"' in outside and f'src="{r["figures"]["key"]["png"]}"' in outside
    for key in ("grouping.model.overview", "grouping.model.top", "quality"):
        assert f'src="{r["figures"][key]["png"]}"' in outside, key
    assert f'src="{r["figures"]["grouping.task.views"]["png"]}"' not in outside


def test_synthetic_banner_only_for_synthetic_stores(built, converted):
    """The banner follows the store's provenance: kind ``synth`` (filtershift synth) shows it, a converted HDF5
    file (kind ``h5``) does not."""
    _, r = built
    assert [p["kind"] for p in r["store"]["provenance"]] == ["synth"]
    page = built[0].index_html.read_text()
    assert 'class="banner"' in page and page.index('class="banner"') < page.index('id="overview"')
    result, r2 = converted
    assert [p["kind"] for p in r2["store"]["provenance"]] == ["h5"]
    assert 'class="banner"' not in result.index_html.read_text()


def test_basis_heading_says_whose_basis(built, converted):
    """A report on a selection with ``basis: selection`` does not call its basis global."""
    assert "<h2>Global basis</h2>" in built[0].index_html.read_text()
    result, r = converted
    assert r["basis"]["basis_scope"] == "selection"
    page = result.index_html.read_text()
    assert "<h2>Basis of the selected records</h2>" in page and "Global basis" not in page


def test_init_caption_names_its_order():
    """The init matrix's caption says how its groups are ordered (by mean drift), not "as above": above, the key
    figure shows depth in depth order."""
    from filtershift.report.figures import _init_caption

    c = {"name": "depth", "gr": {"init": {"metric": "kl_sym", "inits": ["kaiming_uniform"], "layers": [1, 2],
                                          "seed": 0}}}
    text = _init_caption(c)
    assert "same order as above" not in text and "sorted by increasing mean kl_sym drift" in text


def test_history_counts_where_the_card_counts(built):
    """The history tracks degenerated layers as the count the quality card shows, and every trend panel names its
    unit."""
    from filtershift.report import build, figures

    result, r = built
    assert r["headline"]["degenerated layers (count)"] == r["quality"]["n_degenerated"]
    assert "degenerated layers" not in r["headline"]
    history = result.history_html.read_text()
    assert "<th>degenerated layers (count)</th>" in history and "<th>filters (count)</th>" in history
    runs = [json.loads((result.run_dir / "run.json").read_text())]
    series = build.trend_series(runs)
    assert series["degenerated layers (count)"] == [r["quality"]["n_degenerated"]]
    fig = figures.trend(runs, series)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    figures.plt.close(fig)
    assert len(titles) == len(series) and "mean kl_sym by task (nats)" in titles
    assert "explained variance c0-c2 (share of variance)" in titles and "degenerated layers (count)" in titles


# -- publishing ------------------------------------------------------------------------------------------------------


def test_second_run_reuses_and_spec_change_builds(store, tmp_path):
    out = tmp_path / "out"
    first = build_report(store, out, SMALL, scheduler="threads")
    assert first.status == "built"
    before = tree_digest(first.run_dir)
    again = build_report(store, out, SMALL, scheduler="threads")
    assert (again.status, again.run) == ("skipped", first.run)
    assert tree_digest(first.run_dir) == before
    other = build_report(store, out, {**SMALL, "bins": 50}, scheduler="threads")
    assert other.status == "built" and other.run != first.run and other.spec_hash != first.spec_hash
    assert os.readlink(out / "latest") == f"runs/{other.run}"
    back = build_report(store, out, SMALL, scheduler="threads")
    assert (back.status, back.run) == ("reused", first.run)
    assert os.readlink(out / "latest") == f"runs/{first.run}"
    assert (out / "latest.txt").read_text().strip() == first.run
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([first.run, other.run])
    assert cli(["report", str(store), "--out", str(out), "--config", str(_yaml(tmp_path, SMALL)), "--scheduler",
                "threads", "-q"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted([first.run, other.run])


def _yaml(tmp_path, spec) -> Path:
    import yaml

    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sigkill_midway_leaves_the_last_report_intact(store, tmp_path):
    out = tmp_path / "out"
    good = build_report(store, out, SMALL, scheduler="threads")
    before = tree_digest(out / "runs")
    history = (out / "index.html").read_text()
    cfg = _yaml(tmp_path, {**SPEC, "bins": 40})
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "FILTERSHIFT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "filtershift.cli", "report", str(store), "--out", str(out),
                             "--config", str(cfg), "--scheduler", "threads"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    staging = []
    while time.monotonic() < deadline and proc.poll() is None:
        staging = [p for p in out.glob(".staging-*") if (p / "run.log").is_file()
                   and "stage: grouping" in (p / "run.log").read_text()]
        if staging:
            break
        time.sleep(0.05)
    assert staging and proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert tree_digest(out / "runs") == before
    assert os.readlink(out / "latest") == f"runs/{good.run}"
    assert (out / "index.html").read_text() == history
    nxt = build_report(store, out, SMALL, scheduler="threads")
    assert nxt.status == "skipped" and nxt.removed_unfinished == [staging[0].name]
    assert not list(out.glob(".staging-*"))


def test_failure_keeps_log_and_published_report(store, tmp_path, monkeypatch):
    out = tmp_path / "out"
    good = build_report(store, out, SMALL, scheduler="threads")
    before = tree_digest(out / "runs")

    def boom(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr("filtershift.report.analysis.analyse", boom)
    with pytest.raises(RuntimeError, match="planted failure"):
        build_report(store, out, {**SMALL, "bins": 33}, scheduler="threads")
    assert tree_digest(out / "runs") == before
    assert os.readlink(out / "latest") == f"runs/{good.run}"
    (failed,) = list((out / "failed").iterdir())
    log = (failed / "run.log").read_text()
    assert "planted failure" in log and "Traceback" in log
    code = subprocess.run([sys.executable, "-c", "import sys; from filtershift.cli import main; "
                           "import filtershift.report.analysis as a; "
                           "a.analyse = lambda *x, **k: 1 / 0; "
                           f"sys.exit(main(['report', {str(store)!r}, '--out', {str(out)!r}, '--scheduler', "
                           "'threads', '--force', '-q']))"], capture_output=True, text=True,
                          env={**os.environ, "FILTERSHIFT_PROGRESS": "0"}).returncode
    assert code == 1
    assert os.readlink(out / "latest") == f"runs/{good.run}"


# -- input errors and names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,needle", [
    ("colour: red\n", "'colour'"),
    ("metrics: [kl]\n", "'metrics'"),
    ("bins: 1\n", "'bins'"),
    ("thresholds: {sparsity_eps: 2}\n", "'thresholds.sparsity_eps'"),
    ("figures: {formats: [svg]}\n", "'figures.formats'"),
    ("bootstrap: {n_boot: 1}\n", "'bootstrap.n_boot'"),
    ("groupings: []\n", "'groupings'"),
    ("metrics: [kl_sym\n", "not valid YAML"),
])
def test_config_errors_name_the_key(tmp_path, text, needle, store, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(needle)):
        load_config(path)
    assert cli(["report", str(store), "--out", str(tmp_path / "out"), "--config", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_example_config_is_valid():
    spec = load_config(Path(__file__).resolve().parent.parent / "examples" / "report.yaml")
    assert spec["metrics"] == ["kl_sym", "js", "w1"] and Path(spec["store"]).is_absolute()


def test_exit_codes_for_missing_and_incomplete_stores(store, tmp_path):
    import zarr

    assert cli(["report", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "out")]) == 2
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    group = zarr.open_group(str(broken), mode="r+")
    manifest = dict(group.attrs["filtershift"])
    manifest["state"] = "appending"
    group.attrs["filtershift"] = manifest
    assert cli(["report", str(broken), "--out", str(tmp_path / "out"), "--scheduler", "threads"]) == 3
    assert cli(["report", str(store)]) == 2  # no --out and no config


def test_file_names_are_sanitised(tmp_path):
    for label in ["../../etc/passwd", "a/b", ".hidden", "x" * 300, "Ünïcode label", "", "..", "CON"]:
        name = safe_name(label)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name), name
        assert len(name) <= 70
        assert inside(tmp_path, name).parent == tmp_path.resolve()
    assert safe_name("a/b") != safe_name("a_b")
    with pytest.raises(InputError):
        inside(tmp_path, "..", "escape")


# -- headless Chromium over the DevTools protocol (tornado's websocket client) -------------------------------------


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("headless Chromium is needed: apt-get install -y chromium")


def inspect_page(page: Path, screenshot: Path | None = None, width: int = 1280, height: int = 2400,
                 timeout: float = 60.0) -> dict:
    """Load ``page`` and return {"errors": [...], "images": [{src, complete, width}], "title": str, "key_top": the
    key figure's top (px from the top of the page), "scroll_width" (and "scroll_width_open" with every
    ``<details>`` open), "details": [{summary, open}]}."""
    profile = tempfile.mkdtemp(prefix="fs-chromium-")
    proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        ws = _devtools_url(proc, timeout)
        port = re.search(r":(\d+)/", ws).group(1)
        deadline = time.monotonic() + timeout
        while True:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return asyncio.run(_inspect(pages[0]["webSocketDebuggerUrl"], page, screenshot, width, height, timeout))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_url(proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode(errors="replace")
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
        if not line and proc.poll() is not None:
            break
    raise RuntimeError("Chromium did not start its DevTools endpoint")


async def _inspect(url, page: Path, screenshot, width, height, timeout) -> dict:
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(url, max_message_size=256 * 1024 * 1024)
    ids = iter(range(1, 1_000_000))
    errors, replies, loaded = [], {}, asyncio.Event()

    async def reader():
        while True:
            msg = await conn.read_message()
            if msg is None:
                return
            data = json.loads(msg)
            if "id" in data:
                replies[data["id"]] = data
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                     params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + params["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.loadingFailed":
                errors.append(f"load failed: {params.get('errorText')}")
            elif method == "Page.loadEventFired":
                loaded.set()

    task = asyncio.ensure_future(reader())

    async def call(method, **params):
        i = next(ids)
        conn.write_message(json.dumps({"id": i, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while i not in replies:
            if time.monotonic() > end:
                raise TimeoutError(method)
            await asyncio.sleep(0.01)
        reply = replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    for domain in ("Runtime", "Log", "Page", "Network"):
        await call(f"{domain}.enable")
    await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    await call("Page.navigate", url=Path(page).resolve().as_uri())
    await asyncio.wait_for(loaded.wait(), timeout)
    expr = ("JSON.stringify({title: document.title, images: Array.from(document.images).map(i => "
            "({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})), "
            "key_top: (document.querySelector('#key figure') || {getBoundingClientRect: () => ({top: null})})"
            ".getBoundingClientRect().top, scroll_width: document.documentElement.scrollWidth, "
            "details: Array.from(document.querySelectorAll('details')).map(d => "
            "({summary: (d.querySelector('summary') || {textContent: ''}).textContent, open: d.open})), "
            "scroll_width_open: (document.querySelectorAll('details').forEach(d => { d.open = true; }), "
            "document.documentElement.scrollWidth)})")
    if screenshot is not None:
        shot = await call("Page.captureScreenshot", format="png")
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
    state = json.loads((await call("Runtime.evaluate", expression=expr, returnByValue=True))["result"]["value"])
    task.cancel()
    conn.close()
    return {"errors": errors, **state}
