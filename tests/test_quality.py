"""Quality metrics against an independent numpy port of torchconvquality 0.3.0's per-layer functions.

The port below follows the reference line by line (float64 instead of torch; 0 log 0 counted as 0). It was checked
once against torchconvquality itself with torch (see docs/quality.md); this suite does not need torch.
"""

import json

import numpy as np
import pandas as pd
import pytest

from filtershift.cli import main
from filtershift.errors import InputError
from filtershift.stats import record_stats
from filtershift.stats.quality import (
    METRICS,
    Thresholds,
    entropy_threshold,
    finalize,
    layer_metrics,
    layer_quality,
    model_quality,
    most_degenerated,
    quality_by,
)
from filtershift.store.dataset import from_arrays
from filtershift.store.format import Location, read_table

# -- the port -------------------------------------------------------------------------------------------------------

L, X0, KK, B = 1.2618047, 2.30436435, 0.88767525, -0.31050834


def port_threshold(n):
    with np.errstate(divide="ignore"):
        return L / (1 + np.exp(-KK * (np.log2(n) - X0))) + B


def port_sparsity(w4, eps=0.01):
    w = np.asarray(w4).reshape(w4.shape[0] * w4.shape[1], 9)
    t = float(np.abs(w).max()) * eps
    if t == 0:
        t = 1
    mask = (np.abs(w) >= w.dtype.type(t)).sum(axis=1) == 0
    return mask.sum() / len(w), mask


def port_variance_entropy(w4, mask=None):
    w = np.asarray(w4).reshape(w4.shape[0] * w4.shape[1], 9).astype(np.float64)
    if mask is not None:
        w = w[mask]
    n = len(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.linalg.svd(w - w.mean(axis=0), compute_uv=False) if n else np.zeros(0)
        variance = s ** 2 / (n - 1)
        den = variance.sum()
        if den == 0:
            den = 1
        ratio = variance / den
        e = 0.0
        if ratio.sum() != 0:
            for p in ratio:
                if p != 0:
                    e += p * np.log10(p)
            e = -e
        return e, e / port_threshold(n)


def port_orthogonality(w4):
    w = np.asarray(w4, dtype=np.float64).reshape(w4.shape[0], -1)
    n = w.shape[0]
    t = np.linalg.norm(w, axis=1)[:, None]
    t[t == 0] = 1
    wn = w / t
    return 1 - np.abs(wn @ wn.T - np.eye(n)).sum() / (n * (n - 1))


def port_quality(w4, eps=0.01):
    sp, mask = port_sparsity(w4, eps)
    ve, ven = port_variance_entropy(w4)
    vc, vcn = port_variance_entropy(w4, ~mask)
    return {"n": w4.shape[0] * w4.shape[1], "sparsity": sp, "variance_entropy": ve, "variance_entropy_norm": ven,
            "variance_entropy_clean": vc, "variance_entropy_clean_norm": vcn,
            "orthogonality": port_orthogonality(w4) if w4.shape[0] > 1 else np.nan}


def norms(w4):
    """Mean l1/l2 filter norms, and divided by the std of all the layer's weights."""
    w = np.asarray(w4, dtype=np.float64).reshape(-1, 9)
    l1, l2 = np.abs(w).sum(1).mean(), np.sqrt((w ** 2).sum(1)).mean()
    sd = w.std()
    return {"l1_norm": l1, "l2_norm": l2, "l1_norm_std": l1 / sd if sd else np.nan,
            "l2_norm_std": l2 / sd if sd else np.nan}


PORT_KEYS = ("sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean",
             "variance_entropy_clean_norm", "orthogonality")


def assert_same(got, want, key, rtol=1e-7, atol=1e-9):
    if np.isnan(want):
        assert np.isnan(got), (key, got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=key)


# -- layers ---------------------------------------------------------------------------------------------------------


SPECTRUM = np.array([1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15])


def trained_like(rng, out, inn, sparse_share=0.2):
    """Filters with a decaying spectrum in a random basis and mildly varying scales; a share scaled to 1e-4."""
    n = out * inn
    rotation = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    w = (rng.normal(size=(n, 9)) * SPECTRUM) @ rotation + 0.2 * rotation[0]
    w *= rng.lognormal(0, 0.3, size=(n, 1))
    w[rng.random(n) < sparse_share] *= 1e-4
    return w.reshape(out, inn, 3, 3)


def adversarial(rng):
    w = rng.normal(size=(16, 8, 3, 3))
    w[:5] = 0
    dead_out = w
    w = rng.normal(size=(16, 8, 3, 3))
    w[:, :3] = 0
    dead_in = w
    return {
        "zeros": np.zeros((4, 3, 3, 3)),
        "one": rng.normal(size=(1, 1, 3, 3)),
        "two": rng.normal(size=(2, 1, 3, 3)),
        "identical": np.tile(rng.normal(size=(1, 1, 3, 3)), (4, 4, 1, 1)),
        "huge": rng.normal(size=(8, 4, 3, 3)) * 1e30,
        "tiny": rng.normal(size=(8, 4, 3, 3)) * 1e-30,
        "float16_range": rng.uniform(-6.5e4, 6.5e4, size=(12, 6, 3, 3)),
        "offset": 3 + 0.01 * rng.normal(size=(8, 8, 3, 3)),
        "dead_out_channels": dead_out,
        "dead_in_channels": dead_in,
        "rank_one": rng.normal(size=(64, 1, 1, 1)) * rng.normal(size=(1, 1, 3, 3)),
    }


LAYERS = {**adversarial(np.random.default_rng(1)),
          **{f"gauss{o}x{i}": np.random.default_rng(o).normal(size=(o, i, 3, 3)) for o, i in [(3, 2), (32, 16)]},
          **{f"trained{o}x{i}": trained_like(np.random.default_rng(o + i), o, i) for o, i in [(8, 3), (64, 32)]}}


# -- per layer in memory ---------------------------------------------------------------------------------------------


def test_entropy_threshold_matches_formula():
    n = np.array([0, 1, 2, 3, 9, 16, 100, 4096, 10 ** 7])
    np.testing.assert_allclose(entropy_threshold(n), port_threshold(n.astype(float)), rtol=1e-15)
    assert entropy_threshold(2) < 0 < entropy_threshold(3)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_metrics_match_port(name, dtype):
    w = LAYERS[name]
    if dtype == "float16" and name in ("huge", "tiny"):
        w = w / np.abs(w).max() * 6e4
    w = w.astype(dtype)
    got = layer_metrics(w, convention="torchconvquality")
    want = port_quality(w)
    assert got["n"] == want["n"]
    for key in PORT_KEYS:
        assert_same(got[key], want[key], key)
    for key, value in norms(w).items():
        assert_same(got[key], value, key)


def test_layer_metrics_documented_cases():
    assert np.isnan(layer_metrics(LAYERS["one"])["variance_entropy"])
    assert np.isnan(layer_metrics(LAYERS["one"])["orthogonality"])
    ident = layer_metrics(LAYERS["identical"], convention="torchconvquality")
    assert ident["variance_entropy"] == pytest.approx(0, abs=1e-12)
    assert layer_metrics(np.float32(LAYERS["identical"]), convention="torchconvquality")["variance_entropy"] == 0
    zeros = layer_metrics(LAYERS["zeros"], convention="torchconvquality")
    assert zeros["sparsity"] == 1 and zeros["n_nonsparse"] == 0 and zeros["variance_entropy_clean"] == 0
    # dead out channels count their |0 - 1| diagonal term, as in the reference
    assert zeros["orthogonality"] == pytest.approx(1 - 1 / 3)
    # scale does not change any share or entropy
    base = layer_metrics(LAYERS["gauss32x16"])
    for key in ("sparsity", "variance_entropy", "variance_entropy_clean_norm", "orthogonality", "l2_norm_std"):
        assert layer_metrics(LAYERS["gauss32x16"] * 1e-20)[key] == pytest.approx(base[key], rel=1e-9)


def test_sparsity_threshold_is_rounded_to_the_weights_dtype():
    # float32(0.01) < 0.01: compared in float32 (as torch does) the filter is not sparse, in float64 it would be
    w = np.zeros((2, 1, 3, 3), np.float32)
    w[0, 0, 0, 0] = 1.0
    w[1, 0, 0, 0] = np.float32(0.01)
    assert np.float64(np.float32(0.01)) < 0.01
    assert layer_metrics(w)["sparsity"] == port_sparsity(w)[0] == 0.0
    assert layer_metrics(w.astype(np.float64))["sparsity"] == port_sparsity(w.astype(np.float64))[0] == 0.5
    w[1, 0, 0, 0] = np.nextafter(np.float32(0.01), np.float32(0))
    assert layer_metrics(w)["sparsity"] == port_sparsity(w)[0] == 0.5


def test_finalize_is_vectorised_over_records():
    names = sorted(LAYERS)
    stats = {k: [] for k in ("n", "sum", "com", "l1", "l2", "sc", "nn", "ncom")}
    for name in names:
        w = LAYERS[name].reshape(-1, 9)
        _, mask = port_sparsity(LAYERS[name])
        keep = w[~mask]
        stats["n"].append(len(w))
        stats["sum"].append(w.sum(0))
        d = w - w.mean(0)
        stats["com"].append(d.T @ d)
        stats["l1"].append(np.abs(w).sum())
        stats["l2"].append(np.sqrt((w ** 2).sum(1)).sum())
        stats["sc"].append(mask.sum())
        stats["nn"].append(len(keep))
        dk = keep - keep.mean(0) if len(keep) else keep
        stats["ncom"].append(dk.T @ dk)
    res = finalize(*[np.asarray(stats[k]) for k in ("n", "sum", "com", "l1", "l2", "sc", "nn", "ncom")],
                   convention="torchconvquality")
    for i, name in enumerate(names):
        want = port_quality(LAYERS[name])
        for key in PORT_KEYS[:-1]:
            assert_same(res[key][i], want[key], f"{name} {key}")


def test_bad_arguments():
    with pytest.raises(InputError, match="sparsity_eps"):
        layer_metrics(LAYERS["gauss3x2"], sparsity_eps=0)
    with pytest.raises(InputError, match="finite"):
        layer_metrics(np.full((4, 9), np.inf))
    with pytest.raises(InputError, match="shape"):
        layer_metrics(np.zeros((4, 8)))
    with pytest.raises(InputError, match="entropy_high"):
        Thresholds(entropy_low=0.6, entropy_high=0.5)


# -- out of core, from a Dataset --------------------------------------------------------------------------------------


def store_of(layers, chunk_filters=50, channels=True, groups=None):
    """A Dataset with one record per layer (2 layers per model), channels known when ``channels``."""
    groups = groups or {}
    weights, recs = [], []
    for i, (name, w4) in enumerate(layers.items()):
        w4 = np.asarray(w4, np.float32)
        g = groups.get(name, 1)
        weights.append(w4.reshape(-1, 9))
        recs.append({"model_id": i // 2, "conv_depth": i % 2, "n": w4.shape[0] * w4.shape[1], "layer": name,
                     "out_channels": w4.shape[0] if channels else pd.NA,
                     "in_channels": w4.shape[1] * g if channels else pd.NA, "groups": g if channels else pd.NA})
    recs = pd.DataFrame(recs)
    mods = pd.DataFrame({"model_id": sorted(recs["model_id"].unique())})
    mods["Task"] = ["Classification" if m % 2 else "Detection" for m in mods["model_id"]]
    return from_arrays(np.concatenate(weights), recs, mods, chunk_filters=chunk_filters)


def test_layer_quality_matches_port_per_layer():
    layers = dict(LAYERS)
    rng = np.random.default_rng(7)
    layers["depthwise"] = rng.normal(size=(8, 1, 3, 3))
    layers["grouped"] = rng.normal(size=(6, 2, 3, 3))
    ds = store_of(layers, groups={"depthwise": 8, "grouped": 2})
    table = layer_quality(ds, convention="torchconvquality")
    assert list(table["layer"]) == list(layers)
    for row, (name, w4) in zip(table.itertuples(), layers.items()):
        w4 = np.asarray(w4, np.float32)
        want = {**port_quality(w4), **norms(w4)}
        assert row.n == want["n"]
        for key in PORT_KEYS + ("l1_norm", "l2_norm", "l1_norm_std", "l2_norm_std"):
            assert_same(getattr(row, key), want[key], f"{name} {key}")
        assert row.max_abs == np.abs(w4).max()
    assert table.attrs["sparsity_eps"] == 0.01
    assert list(table["task"].astype(str)) == ["Detection" if (i // 2) % 2 == 0 else "Classification"
                                               for i in range(len(layers))]


def test_orthogonality_only_where_channels_are_known():
    layers = {k: LAYERS[k] for k in ("gauss32x16", "trained8x3", "zeros")}
    table = layer_quality(store_of(layers, channels=False), convention="torchconvquality")
    assert table["orthogonality"].isna().all()
    assert table["in_channels"].isna().all()
    np.testing.assert_allclose(table["variance_entropy"], [port_quality(np.float32(w))["variance_entropy"]
                                                           for w in layers.values()], rtol=1e-7)
    # a sliced Dataset that cuts a layer leaves that layer's orthogonality unknown, not wrong
    full = store_of(layers, chunk_filters=64)
    cut = full.isel(filter=slice(0, 500))
    t = layer_quality(cut)
    assert np.isnan(t["orthogonality"].iloc[0])
    assert t["n"].iloc[0] == 500


def test_layer_quality_shares_the_engine_passes():
    ds = store_of({k: LAYERS[k] for k in ("gauss32x16", "trained64x32")})
    stats = record_stats(ds)
    stats.moments()
    stats.sparsity(0.01)
    before = stats.passes
    layer_quality(stats, orthogonality=False)
    assert stats.passes == before
    layer_quality(stats)
    assert stats.passes == before + 1


def planted():
    """Four models of four layers; planted: a 60 % sparse layer, a rank-one (low-diversity) layer and an untrained
    (i.i.d. Gaussian, random-like) layer. Everything else is trained-like with no sparse filters."""
    rng = np.random.default_rng(11)
    layers = {}
    for m in range(4):
        for d in range(4):
            layers[f"m{m}d{d}"] = trained_like(rng, 32, 16, sparse_share=0.0)
    w = layers["m1d2"].reshape(-1, 9).copy()
    w[rng.permutation(len(w))[: int(0.6 * len(w))]] = 0
    layers["m1d2"] = w.reshape(32, 16, 3, 3)
    layers["m2d3"] = rng.lognormal(0, 1, size=(32, 16, 1, 1)) * rng.normal(size=(1, 1, 3, 3)) \
        + 1e-4 * rng.normal(size=(32, 16, 3, 3))
    layers["m3d0"] = rng.normal(size=(32, 16, 3, 3))
    recs = []
    for i, name in enumerate(layers):
        recs.append({"model_id": i // 4, "conv_depth": i % 4, "n": 512, "layer": name, "out_channels": 32,
                     "in_channels": 16, "groups": 1})
    mods = pd.DataFrame({"model_id": range(4), "Task": ["Classification", "Detection"] * 2})
    w = np.concatenate([np.float32(v).reshape(-1, 9) for v in layers.values()])
    return layers, from_arrays(w, pd.DataFrame(recs), mods, chunk_filters=300)


def test_planted_degeneration_is_recovered():
    layers, ds = planted()
    table = layer_quality(ds).set_index("layer")
    assert set(table.index[table["degenerated"]]) == {"m1d2", "m2d3", "m3d0"}
    assert table.loc["m1d2", "sparse"] and table.loc["m1d2", "sparsity"] == int(0.6 * 512) / 512
    assert table.loc["m2d3", "low_diversity"] and table.loc["m3d0", "random_like"]
    assert table["sparse"].sum() == table["low_diversity"].sum() == table["random_like"].sum() == 1
    top = most_degenerated(table.reset_index(), 3)
    assert set(top["layer"]) == {"m1d2", "m2d3", "m3d0"}
    assert (top["degeneration"] >= 1).all()
    assert (table.loc[~table["degenerated"], "degeneration"] < 1).all()
    # stricter thresholds: nothing, looser: more
    strict = layer_quality(ds, thresholds={"sparsity": 0.7, "entropy_low": 0.0, "entropy_high": 2.0})
    assert not strict["degenerated"].any()


def test_model_quality_aggregates_layers():
    layers, ds = planted()
    table = layer_quality(ds)
    models = model_quality(table)
    assert list(models["model_id"]) == [0, 1, 2, 3]
    for row in models.itertuples():
        g = table[table["model_id"] == row.model_id]
        assert row.n_layers == len(g) and row.n_filters == g["n"].sum()
        for key in METRICS:
            v, w = g[key].to_numpy(), g["n"].to_numpy(float)
            ok = np.isfinite(v)
            want = np.sum(v[ok] * w[ok]) / np.sum(w[ok]) if ok.any() else np.nan
            assert_same(getattr(row, key), want, key)
        assert row.degenerated_share == g["degenerated"].mean()
        assert row.degenerated_filter_share == g.loc[g["degenerated"], "n"].sum() / g["n"].sum()
    assert list(models["task"].astype(str)) == ["Classification", "Detection"] * 2
    assert most_degenerated(models, 1)["model_id"].iloc[0] in (1, 2, 3)
    assert most_degenerated(models, 4)["degenerated_share"].iloc[-1] == 0
    pd.testing.assert_frame_equal(model_quality(ds), models)


def test_quality_by_group():
    _, ds = planted()
    table = layer_quality(ds)
    res = quality_by(table, "Task", quantiles=(0.25, 0.5))
    assert list(res["group"].values) == ["Classification", "Detection"]
    for label in res["group"].values:
        g = table[table["task"] == label]
        sel = res.sel(group=label)
        assert sel["n_rows"] == len(g) and sel["n_filters"] == g["n"].sum()
        assert float(sel["degenerated_share"]) == g["degenerated"].mean()
        for key in ("sparsity", "variance_entropy_clean_norm", "l2_norm_std"):
            v = g[key].to_numpy()
            np.testing.assert_allclose(sel["mean"].sel(metric=key), np.average(v, weights=g["n"]), rtol=1e-12)
            np.testing.assert_allclose(sel["quantiles"].sel(metric=key), np.quantile(v, [0.25, 0.5]), rtol=1e-12)
            edges = res["bin_edges"].sel(metric=key).values
            np.testing.assert_array_equal(sel["hist"].sel(metric=key), np.histogram(v, edges)[0])
    by_two = quality_by(table, ["task", "depth"])
    assert by_two.sizes["group"] == table.groupby(["task", "depth"], observed=True).ngroups
    with pytest.raises(InputError, match="no column"):
        quality_by(table, "colour")


# -- CLI ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    from filtershift.synth import synthesize

    path = tmp_path_factory.mktemp("quality") / "s.zarr"
    synthesize(path, n_filters=30_000, n_models=10, seed=2, format="zarr")
    return path


def test_cli_json_top_and_out(store_path, tmp_path, capsys):
    import zarr

    assert main(["quality", str(store_path), "--json", "--top", "3", "--out", str(tmp_path / "q.parquet")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3
    scores = [r["degeneration"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    # recompute the top row from the store read with plain zarr + pandas
    g = zarr.open_group(str(store_path), mode="r")
    v = g.attrs["filtershift"]["version"]
    recs = read_table(Location.of(store_path), "records", v)
    r = recs.set_index("record").loc[rows[0]["record"]]
    w = g["weights"][r["start"]:r["stop"]][:, None].reshape(-1, 1, 3, 3)
    want = port_quality(w)
    for key in PORT_KEYS[:-1]:
        assert_same(rows[0][key], want[key], key)
    assert rows[0]["orthogonality"] is None
    saved = pd.read_parquet(tmp_path / "q.parquet")
    assert list(saved["record"]) == [r["record"] for r in rows]
    assert main(["quality", str(store_path), "--models", "--out", str(tmp_path / "m.csv")]) == 0
    models = pd.read_csv(tmp_path / "m.csv")
    assert len(models) == 10 and {"degenerated_share", "n_layers"} <= set(models.columns)


def test_cli_errors(store_path, capsys):
    assert main(["quality", str(store_path), "--out", "table.txt"]) == 2
    assert "parquet or .csv" in capsys.readouterr().err
    assert main(["quality", str(store_path), "--eps", "0"]) == 2
    assert "argument --eps: 0 is out of range" in capsys.readouterr().err
