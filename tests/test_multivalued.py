"""Multi-valued meta cells as groupings, ``--by training_dataset:each``: a model whose cell lists k values is a member
of each of the k groups with all its filters. Checked against pandas (``str.split`` + ``explode``, then a sum per
group) on a hand-written dataset.h5, and against the numpy definitions of test_stats_analysis on the raw weights."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import sources
from test_stats_analysis import ref_hist, ref_kl, ref_pca, ref_scale

import filtershift as fs
from filtershift.cli import main as cli
from filtershift.errors import InputError
from filtershift.stats import record_stats
from filtershift.store.convert import convert

#: Training-Dataset per model (two records each): lists, odd spacing, an empty part, missing cells, a repeat.
TRAIN = ["ImageNet", "COCO, ImageNet", None, "ImageNet,SVHN", "COCO", " SVHN , , COCO", "ImageNet",
         "COCO, ImageNet", "SVHN", None, "COCO, COCO"]
BINS = 30


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """dataset.h5 of 11 models x 2 records (about 8,000 filters in 4 chunks), its weights, meta and store."""
    tmp = tmp_path_factory.mktemp("multivalued")
    sizes = np.random.default_rng(7).integers(150, 600, size=2 * len(TRAIN))
    meta = sources.make_meta(sizes)
    model = meta.index.get_level_values("model_id")
    meta["Training-Dataset"] = np.array(TRAIN, dtype=object)[model]
    w = sources.random_weights(int(sizes.sum()), seed=4)
    w[: sizes[0] + sizes[1]] *= np.linspace(0.2, 2, 9).astype(np.float32)  # model 0 differs a little
    h5 = sources.write_source(tmp / "dataset.h5", w, meta)
    store = convert(h5, str(tmp / "db.zarr"), chunk_filters=2048)
    return w, meta, store


@pytest.fixture(scope="module")
def analysed(source):
    w, meta, store = source
    ds = fs.open_store(store)
    return ds, fs.fit_basis(ds)


def exploded(meta) -> pd.DataFrame:
    """One row per record and listed training set (pandas: split on commas, strip, drop empty parts and repeats);
    the task cleaned by the store's default rule (every "...Segmentation..." is "Segmentation")."""
    flat = meta.reset_index()
    first, last = (flat["filter_ids"].str.split(":").str[i].astype(int) for i in (0, 1))
    rec = pd.DataFrame({"model_id": flat["model_id"], "first": first, "n": last - first + 1,
                        "task": flat["Task"].where(~flat["Task"].str.contains("Segmentation"), "Segmentation"),
                        "train": flat["Training-Dataset"].str.split(",")})
    rec["record"] = np.arange(len(rec))
    out = rec.explode("train")
    out["train"] = out["train"].str.strip()
    return out[out["train"].notna() & (out["train"] != "")].drop_duplicates(["record", "train"])


def filters_of(rows: pd.DataFrame) -> np.ndarray:
    return np.concatenate([np.arange(f, f + n) for f, n in zip(rows["first"], rows["n"])])


def test_group_sums_equal_the_exploded_column(source, analysed):
    w, meta, _ = source
    ds, basis = analysed
    dist = fs.distributions(basis, by="training_dataset:each", bins=BINS, min_filters=1)
    ex = exploded(meta)
    groups = sorted(ex["train"].unique())
    assert list(dist["group"].values) == groups == ["COCO", "ImageNet", "SVHN"]
    assert dist.attrs["overlapping"] is True
    assert dist["n_filters"].values.tolist() == ex.groupby("train")["n"].sum().loc[groups].tolist()
    assert dist["n_models"].values.tolist() == ex.groupby("train")["model_id"].nunique().loc[groups].tolist()
    assert dist["n_filters"].values.sum() > len(w)   # groups overlap: their sizes add up to more than the store
    per_record = record_stats(ds).histograms(basis, BINS)["counts"].values        # (record, component, bin)
    expected = np.stack([per_record[ex.loc[ex["train"] == g, "record"]].sum(0) for g in groups])
    np.testing.assert_array_equal(dist["counts"].values, expected)
    assert dist.attrs["n_models_dropped"] == TRAIN.count(None)
    assert dist.attrs["n_filters_dropped"] == exploded_missing(meta) > 0


def exploded_missing(meta) -> int:
    """Filters of the models without a training set (pandas)."""
    flat = meta.reset_index()
    first, last = (flat["filter_ids"].str.split(":").str[i].astype(int) for i in (0, 1))
    return int((last - first + 1)[flat["Training-Dataset"].isna()].sum())


def test_drift_and_moments_equal_numpy_on_the_weights(source, analysed):
    w, meta, _ = source
    _, basis = analysed
    ex = exploded(meta)
    groups = sorted(ex["train"].unique())
    dist = fs.distributions(basis, by="training_dataset:each", bins=BINS, min_filters=1)
    mean, comps, _, ratio = ref_pca(w)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    idx = {g: filters_of(ex[ex["train"] == g]) for g in groups}
    hists = {g: [ref_hist(coef[idx[g], k], lo, hi, BINS) for k in range(9)] for g in groups}
    ref = np.array([[sum(ratio[k] * (ref_kl(hists[a][k], hists[b][k]) + ref_kl(hists[b][k], hists[a][k]))
                         for k in range(9)) for b in groups] for a in groups])
    np.testing.assert_allclose(fs.drift(dist).values, ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(dist["coef_var"].values, [coef[idx[g]].var(0, ddof=1) for g in groups], rtol=1e-6)
    bases = fs.group_bases(basis, by="training_dataset:each")
    assert bases["n_filters"].values.tolist() == [len(idx[g]) for g in groups]
    for i, g in enumerate(groups):
        x = ref_scale(w[idx[g]])
        np.testing.assert_allclose(bases["mean"].values[i], x.mean(0), rtol=1e-6, atol=1e-9)
        vals = np.sort(np.linalg.eigvalsh(np.cov(x.T, ddof=1)))[::-1]
        np.testing.assert_allclose(bases["explained_variance"].values[i], vals, rtol=1e-6, atol=1e-12)


def test_combined_with_another_key_and_kept_missing(source, analysed):
    _, meta, _ = source
    _, basis = analysed
    ex = exploded(meta)
    dist = fs.distributions(basis, by=["training_dataset:each", "task"], bins=BINS, min_filters=1)
    sizes = ex.groupby(["train", "task"])["n"].sum()
    assert list(dist["group"].values) == [f"{a} / {b}" for a, b in sizes.index]
    assert dist["n_filters"].values.tolist() == sizes.tolist()
    kept = fs.distributions(basis, by="Training-Dataset:each", bins=BINS, keep_missing=True)
    assert list(kept["group"].values) == ["COCO", "ImageNet", "SVHN", "unknown"]
    assert kept["n_filters"].values[-1] == exploded_missing(meta) and kept.attrs["n_filters_dropped"] == 0


def test_density2d_sums_the_members(source, analysed):
    _, meta, _ = source
    _, basis = analysed
    ex = exploded(meta)
    per_model = fs.density2d(basis, bins=16, by="model")
    by_model = {int(g): per_model.values[i] for i, g in enumerate(per_model["group"].values)}
    each = fs.density2d(basis, bins=16, by="training_dataset:each")
    for i, g in enumerate(each["group"].values):
        models = ex.loc[ex["train"] == g, "model_id"].unique()
        np.testing.assert_array_equal(each.values[i], sum(by_model[m] for m in models))


def test_single_valued_cells_give_the_plain_grouping(analysed):
    _, basis = analysed
    plain = fs.distributions(basis, by="visual_category", bins=BINS, min_filters=1)
    each = fs.distributions(basis, by="visual_category:each", bins=BINS, min_filters=1)
    assert "overlapping" not in each.attrs
    for name in ("counts", "n_filters", "n_models", "coef_var", "member_counts", "member_model"):
        np.testing.assert_array_equal(each[name].values, plain[name].values, err_msg=name)
    test_plain, test_each = (fs.drift_test(d, n_perm=49) for d in (plain, each))
    np.testing.assert_array_equal(test_each["p_value"].values, test_plain["p_value"].values)


def test_permutation_keeps_shared_models_in_both(source, analysed):
    """A pair of overlapping groups: the models in both stay in both, the others are shuffled (every split
    enumerated, each split's drift from numpy on the weights)."""
    w, meta, _ = source
    _, basis = analysed
    ex = exploded(meta)
    dist = fs.distributions(basis, by="training_dataset:each", bins=BINS, min_filters=1)
    test = fs.drift_test(dist, n_perm=999)
    a, b = "COCO", "ImageNet"
    in_a, in_b = (set(ex.loc[ex["train"] == g, "model_id"]) for g in (a, b))
    shared, only_a, only_b = sorted(in_a & in_b), sorted(in_a - in_b), sorted(in_b - in_a)
    assert shared and len(only_a) >= 2 and len(only_b) >= 2
    mean, comps, _, ratio = ref_pca(w)
    coef = (ref_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    per_model = ex.drop_duplicates("record")

    def kl(models_a, models_b):
        ia, ib = (filters_of(per_model[per_model["model_id"].isin(ms)]) for ms in (models_a, models_b))
        return sum(ratio[k] * (ref_kl(p, q) + ref_kl(q, p)) for k in range(9)
                   for p, q in [(ref_hist(coef[ia, k], lo, hi, BINS), ref_hist(coef[ib, k], lo, hi, BINS))])

    pool = only_a + only_b
    splits = [kl(shared + list(c), shared + [m for m in pool if m not in c])
              for c in itertools.combinations(pool, len(only_a))]
    observed = kl(shared + only_a, shared + only_b)
    expected = np.mean(np.array(splits) >= observed * (1 - 1e-9))
    assert int(test["n_splits"].sel(group_a=a, group_b=b)) == len(splits)
    np.testing.assert_allclose(float(test["p_value"].sel(group_a=a, group_b=b)), expected)


@pytest.mark.parametrize("key,words", [("nope:each", "label column .* unknown grouping 'nope'; choose one of"),
                                       ("total_filters:each", "label column .* unknown grouping 'total_filters'"),
                                       ("depth:each", "label column .* unknown grouping 'depth'")])
def test_bad_keys(analysed, key, words):
    with pytest.raises(InputError, match=words):
        fs.distributions(analysed[1], by=key, bins=BINS)


def test_cli_drift_each(source, capsys):
    _, meta, store = source
    assert cli(["drift", store, "--by", "Training-Dataset:each", "--permutations", "19", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ex = exploded(meta)
    assert out["labels"] == ["COCO", "ImageNet", "SVHN"] and out["overlapping"] is True
    assert out["n_filters"] == ex.groupby("train")["n"].sum().tolist()
    assert cli(["drift", store, "--by", "training_dataset:each", "--permutations", "0"]) == 0
    assert "groups overlap" in capsys.readouterr().out


def test_membership_of_a_hand_made_table():
    """groups() on per-record meta written by hand: members, left out records, a part named like the missing label,
    the sets of groups a per-record pass counts, and the sums through the membership."""
    import xarray as xr

    from filtershift.stats.grouping import group_sum, groups

    labels = ["A, unknown", "B", "B ,A", "unknown", ", "]     # "unknown" (code 3) is the missing label
    meta = xr.Dataset({"n": ("record", np.array([1, 2, 4, 8, 16, 32])),
                       "model_id": ("record", np.array([0, 0, 1, 2, 3, 4])),
                       "train": ("record", np.array([0, 0, 2, 1, 3, 4]),
                                 {"labels": labels, "missing": "unknown", "column": "Train"})})
    g = groups(meta, "Train:each")
    assert g.labels == ["A", "B", "unknown"] and g.overlapping
    np.testing.assert_array_equal(g.members[0], [0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(g.members[1], [0, 2, 0, 2, 0, 1, 1])
    assert g.left_out.tolist() == [False, False, False, False, True, True]
    assert group_sum(g.members, meta["n"].values, g.size).tolist() == [1 + 2 + 4, 4 + 8, 1 + 2]
    assert g.dropped(meta) == {"n_filters_dropped": 48, "n_models_dropped": 2, "missing_labels": "dropped"}
    codes, sets = g.atoms(6)
    assert codes.tolist() == [0, 0, 1, 2, -1, -1]
    assert list(zip(*sets)) == [(0, 0), (0, 2), (1, 0), (1, 1), (2, 1)]
    kept = groups(meta, "train:each", keep_missing=True)
    assert kept.labels == ["A", "B", "unknown", "unknown (missing)"] and kept.left_out is None
    assert group_sum(kept.members, meta["n"].values, kept.size).tolist() == [7, 12, 3, 48]
