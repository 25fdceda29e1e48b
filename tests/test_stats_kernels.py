"""The numba chunk kernels and the record-keyed merges equal plain numpy definitions written here."""

import numpy as np
import pytest

from filtershift.stats import grouping, histograms, moments, reduction


def _data(seed=0, n=6000):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, 9)) * rng.lognormal(0, 1, (n, 1)) + 0.3).astype(np.float32)
    w[10:20] = 0.0                                   # all-zero filters
    w[100:103] = np.float32(1e-6) * w[100:103]       # tiny filters
    sizes = [1, 700, 0, 1500, 2, 3797]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return w, starts


def _np_scale(w):
    x = w.astype(np.float64)
    m = np.abs(x).max(1, keepdims=True)
    out = np.zeros_like(x)
    np.divide(x, m, out=out, where=m > 0)
    return out


def _np_comoment(x):
    if len(x) == 0:
        return np.zeros((9, 9))
    d = x - x.mean(0)
    return np.einsum("ip,iq->pq", d, d)


def test_moments_kernel_equals_numpy():
    w, starts = _data()
    r = len(starts) - 1
    out = [np.zeros(r, np.int64), np.zeros((r, 9)), np.zeros((r, 9, 9)), np.zeros((r, 9)), np.zeros((r, 9, 9)),
           np.zeros(r), np.zeros(r), np.zeros(r), np.zeros(r)]
    moments.moments_kernel(w, starts, *out)
    n, s_sum, s_com, r_sum, r_com, amax, fmin, l1, l2 = out
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        raw = w[a:b].astype(np.float64)
        sc = _np_scale(w[a:b])
        assert n[i] == b - a
        np.testing.assert_allclose(s_sum[i], sc.sum(0), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(s_com[i], _np_comoment(sc), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(r_sum[i], raw.sum(0), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(r_com[i], _np_comoment(raw), rtol=1e-10, atol=1e-9)
        assert amax[i] == (np.abs(raw).max() if b > a else 0.0)
        assert fmin[i] == (np.abs(raw).max(1).min() if b > a else np.inf)
        np.testing.assert_allclose(l1[i], np.abs(raw).sum(), rtol=1e-12)
        np.testing.assert_allclose(l2[i], np.linalg.norm(raw, axis=1).sum(), rtol=1e-12)
    # the kernel's reference in the module agrees too
    ref = moments.moments_reference(w, starts)
    np.testing.assert_allclose(ref["raw_comoment"], r_com, rtol=1e-10, atol=1e-9)


def test_moments_accurate_with_large_offset():
    rng = np.random.default_rng(1)
    w = (1000.0 + rng.standard_normal((20000, 9))).astype(np.float32)
    starts = np.array([0, 20000], np.int64)
    out = [np.zeros(1, np.int64), np.zeros((1, 9)), np.zeros((1, 9, 9)), np.zeros((1, 9)), np.zeros((1, 9, 9)),
           np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1)]
    moments.moments_kernel(w, starts, *out)
    x = w.astype(np.float64)
    np.testing.assert_allclose(out[4][0] / 19999, np.cov(x.T), rtol=1e-9, atol=1e-9)


def test_pass2_kernels_equal_numpy():
    w, starts = _data(2)
    rng = np.random.default_rng(3)
    mean = rng.standard_normal(9) * 0.1
    comps = np.linalg.qr(rng.standard_normal((9, 9)))[0].T
    amax = np.array([np.abs(w[a:b]).max() if b > a else 0.0 for a, b in zip(starts[:-1], starts[1:])])
    amax[3] = 0.0  # a record declared all-zero: every filter sparse
    rmean = np.array([w[a:b].astype(np.float64).mean(0) if b > a else np.zeros(9)
                      for a, b in zip(starts[:-1], starts[1:])])
    rec = np.repeat(np.arange(len(starts) - 1), np.diff(starts)).astype(np.int32)
    eps = 0.05
    runs = [w[a:b].astype(np.float64) for a, b in zip(starts[:-1], starts[1:])]
    fmin = np.array([np.abs(x).max(1).min() if len(x) else np.inf for x in runs])
    clean = moments.clean_records(amax, fmin, eps)
    assert clean.any() and not clean.all()           # both paths of the kernel run
    params = {"record": np.arange(len(starts) - 1), "raw_absmax": amax, "raw_mean": rmean, "eps": eps,
              "clean": clean, "mean": mean, "components": comps}
    present = np.flatnonzero(np.diff(starts) > 0)
    part = moments.range_sparsity_chunk(w, rec, params)
    np.testing.assert_array_equal(part["record"], present)
    part = moments.range_sparsity_finalize(part, clean[present], np.diff(starts)[present],
                                   np.array([x.sum(0) for x in runs])[present],
                                   np.array([_np_comoment(x) for x in runs])[present])
    for pos, i in enumerate(present):
        a, b = starts[i], starts[i + 1]
        raw = w[a:b].astype(np.float64)
        coef = (_np_scale(w[a:b]) - mean) @ comps.T
        np.testing.assert_allclose(part["coef_min"][pos], coef.min(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(part["coef_max"][pos], coef.max(0), rtol=1e-12, atol=1e-12)
        sparse = np.all(np.abs(raw) < eps * amax[i], axis=1) if amax[i] > 0 else np.ones(len(raw), bool)
        assert part["sparse_count"][pos] == sparse.sum()
        assert part["nonsparse_n"][pos] == (~sparse).sum()
        np.testing.assert_allclose(part["nonsparse_sum"][pos], raw[~sparse].sum(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(part["nonsparse_comoment"][pos], _np_comoment(raw[~sparse]), rtol=1e-8,
                                   atol=1e-8)


@pytest.mark.parametrize("bins", [70, 7])
def test_hist_kernel_equals_np_histogram(bins):
    w, starts = _data(4)
    rng = np.random.default_rng(5)
    mean = rng.standard_normal(9) * 0.1
    comps = np.linalg.qr(rng.standard_normal((9, 9)))[0].T[:5]
    coef = (_np_scale(w) - mean) @ comps.T
    lo, hi = coef.min(), coef.max()
    edges = np.linspace(lo, hi, bins + 1)
    fine = np.linspace(lo, hi, 301)
    counts = np.zeros((len(starts) - 1, 5, bins), np.int64)
    fcounts = np.zeros((len(starts) - 1, 5, 300), np.int64)
    histograms.hist_kernel(w, starts, mean, comps, edges, fine, counts, fcounts, np.zeros(2, np.int64), np.zeros(0),
                           np.zeros(len(starts) - 1, np.int64), np.zeros((1, 1, 1), np.int64))
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        for j in range(5):
            np.testing.assert_array_equal(counts[i, j], np.histogram(coef[a:b, j], bins=bins, range=(lo, hi))[0])
            np.testing.assert_array_equal(fcounts[i, j], np.histogram(coef[a:b, j], bins=300, range=(lo, hi))[0])
    # values on the edges, and outside the range, follow np.histogram exactly
    x = np.concatenate([edges, [lo - 1, hi + 1], rng.uniform(lo, hi, 1000)])
    got = np.array([histograms.bin_index(v, edges) for v in x])
    ref = np.histogram(x, bins=bins, range=(lo, hi))[0]
    assert np.array_equal(np.bincount(got[got >= 0], minlength=bins), ref)
    assert (got < 0).sum() == 2


@pytest.mark.parametrize("uniform", [True, False])
def test_bin_row_on_and_next_to_every_edge(uniform):
    """The binning loop against np.histogram on the hardest values: every edge, its neighbours, out of range, NaN.
    Non-linspace edges (one moved by an ulp) take the edge-lookup path."""
    edges = np.linspace(-2.37, 3.11, 71)
    if not uniform:
        edges[5] = np.nextafter(edges[5], np.inf)
    assert histograms.linspace_edges(edges) == uniform
    inner = edges[1:-1]
    rng = np.random.default_rng(9)
    x = np.concatenate([edges, np.nextafter(inner, -np.inf), np.nextafter(inner, np.inf),
                        [np.nextafter(edges[0], np.inf), np.nextafter(edges[-1], -np.inf), -5.0, 7.0, np.nan],
                        rng.uniform(edges[0], edges[-1], 3000)])
    c = x[None, :]
    row = np.zeros(71, np.int64)
    histograms._bin_row(c, 0, x.size, edges, row, np.empty(x.size, np.int64), uniform)
    np.testing.assert_array_equal(row[:70], np.histogram(x[np.isfinite(x)], bins=edges)[0])
    assert row[70] == 3            # -5, 7 and NaN


def test_runs_and_merge():
    rec = np.array([3, 3, 5, 5, 5, 9], np.int32)
    perm, ids, starts = reduction.runs(rec)
    assert perm is None and ids.tolist() == [3, 5, 9] and starts.tolist() == [0, 2, 5, 6]
    perm, ids, starts = reduction.runs(np.array([5, 5, 3, 5], np.int32))
    assert ids.tolist() == [3, 5] and starts.tolist() == [0, 1, 4] and perm is not None

    rng = np.random.default_rng(6)
    w = rng.standard_normal((3000, 9)).astype(np.float32)
    rec = np.repeat([0, 1, 2, 3], [500, 1200, 800, 500]).astype(np.int32)
    whole = moments.moments_chunk(w, rec)
    cuts = [0, 300, 1100, 1101, 2400, 3000]
    parts = [moments.moments_chunk(w[a:b], rec[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    # combine in an unusual order: ((p3, p0), (p4, (p2, p1)))
    merged = moments.moments_combine(moments.moments_combine(parts[3], parts[0]),
                                     moments.moments_combine(parts[4], moments.moments_combine(parts[2], parts[1])))
    # and in block order, all at once: the concatenating path, record 1 shared by three blocks
    ordered = moments.moments_combine(*parts)
    for m in (merged, ordered):
        assert m["record"].tolist() == [0, 1, 2, 3]
        for k in ("n", "scaled_sum", "scaled_comoment", "raw_sum", "raw_comoment", "raw_absmax", "raw_l1_sum"):
            np.testing.assert_allclose(m[k], whole[k], rtol=1e-10, atol=1e-9)
    assert moments.moments_combine(parts[0], {k: v[:0] for k, v in parts[1].items()}, parts[1])["n"].tolist() == \
        moments.moments_combine(parts[0], parts[1])["n"].tolist() == [500, 600]


def test_group_sum_and_comoments_against_numpy():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5000, 9)) + 2
    rec = np.sort(rng.integers(0, 40, 5000))
    ids = np.unique(rec)
    n = np.array([(rec == r).sum() for r in ids])
    sums = np.array([x[rec == r].sum(0) for r in ids])
    com = np.array([_np_comoment(x[rec == r]) for r in ids])
    codes = rng.integers(-1, 4, len(ids))
    gn, gs, gc = grouping.group_comoments(codes, n, sums, com, 5)
    for g in range(5):
        rows = np.isin(rec, ids[codes == g])
        assert gn[g] == rows.sum()
        np.testing.assert_allclose(gs[g], x[rows].sum(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gc[g], _np_comoment(x[rows]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n_groups", [1, 3, 300])
def test_group_sum_counts_and_floats(n_groups):
    rng = np.random.default_rng(n_groups)
    codes = rng.integers(-1, n_groups, 2000)
    counts = rng.integers(0, 1000, (2000, 9, 7))
    floats = rng.standard_normal((2000, 9, 9))
    got_c = grouping.group_sum(codes, counts, n_groups)
    got_f = grouping.group_sum(codes, floats, n_groups)
    assert got_c.dtype == np.int64 and got_c.shape == (n_groups, 9, 7)
    for g in range(n_groups):
        np.testing.assert_array_equal(got_c[g], counts[codes == g].sum(0))
        np.testing.assert_allclose(got_f[g], floats[codes == g].sum(0), rtol=1e-12, atol=1e-12)
    assert grouping.group_sum(np.full(5, -1), np.ones((5, 2)), 70).sum() == 0
    small = counts[:, 0, 0].astype(np.int32)            # 1-D values of a narrow integer type sum in int64
    got = grouping.group_sum(codes, small, n_groups)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.bincount(codes[codes >= 0], small[codes >= 0], n_groups))


def test_precompile_child_process_writes_numba_cache(tmp_path, monkeypatch):
    """The demo's child process compiles the kernels it is given into numba's cache (the directory the parent's
    environment names), and the parent's thread then has them compiled too."""
    from filtershift.stats import kernels

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    kernel, signature = kernels.analysis_kernels()[1]
    assert kernel.__name__ == "group_add_kernel"
    kernels.precompile([], child=("group_add_kernel",)).join(timeout=300)
    assert list(tmp_path.rglob("grouping.group_add_kernel-*.nbi")), sorted(p.name for p in tmp_path.rglob("*"))
    assert signature in kernel.overloads


def test_precompile_child_refuses_unknown_kernel_names():
    from filtershift.stats import kernels

    assert kernels.main(["no_such_kernel"]) == 2
