"""A metric and a report figure are each declared once: a new entry in the registry reaches every consumer."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from filtershift import metrics
from filtershift.report import figures, html
from filtershift.report.build import draw
from filtershift.report.config import DEFAULTS, validate


def _hellinger(p, widths=None):
    """Hellinger distance per component for every pair (an independent metric, for the test)."""
    s = np.sqrt(p)
    return np.sqrt(0.5 * ((s[..., :, None, :, :] - s[..., None, :, :, :]) ** 2).sum(-1))


@pytest.fixture
def hellinger(monkeypatch):
    m = metrics.Metric("hellinger", "Hellinger", "1", _hellinger, smoothed=False, description="Hellinger distance")
    monkeypatch.setitem(metrics.METRICS, "hellinger", m)
    return m


def test_a_new_metric_reaches_drift_the_cli_and_the_report_spec(hellinger):
    import copy

    from filtershift.cli import build_parser
    from filtershift.stats import distributions, drift
    from filtershift.store.dataset import from_arrays

    rng = np.random.default_rng(1)
    n = [400, 500, 300, 450]
    recs = pd.DataFrame({"model_id": [1, 2, 3, 4], "conv_depth": [0] * 4, "conv_depth_norm": [0.0] * 4, "n": n})
    mods = pd.DataFrame({"model_id": [1, 2, 3, 4], "Task": ["a", "a", "b", "b"]})
    w = rng.standard_normal((sum(n), 9)).astype(np.float32)
    w[:900] += 0.5
    dist = distributions(from_arrays(w, recs, mods), by="task", bins=20)
    got = drift(dist, "hellinger")
    counts = dist["counts"].values.astype(np.float64)
    p = counts / counts.sum(-1, keepdims=True)
    ratio = dist["explained_variance_ratio"].values
    want = sum(ratio[k] * np.sqrt(0.5 * ((np.sqrt(p[0, k]) - np.sqrt(p[1, k])) ** 2).sum()) for k in range(9))
    assert got.values[0, 1] == pytest.approx(want, rel=1e-12) and got.attrs["metric"] == "hellinger"

    spec = copy.deepcopy(DEFAULTS)
    spec["metrics"] = ["kl_sym", "hellinger"]
    assert validate(spec)["metrics"] == ["kl_sym", "hellinger"]
    parser = build_parser()
    assert parser.parse_args(["drift", "s.zarr", "--by", "task", "--metric", "hellinger"]).metric == "hellinger"
    assert parser.parse_args(["compare", "m.onnx", "--store", "s", "--metric", "hellinger"]).metric == "hellinger"


def test_unknown_metric_is_refused_with_the_choices():
    from filtershift.errors import InputError

    with pytest.raises(InputError, match=r"metric must be one of \['kl_sym', 'js', 'w1'\]"):
        metrics.metric("kl")


def _analysis():
    comps = np.linalg.qr(np.random.default_rng(0).standard_normal((9, 9)))[0]
    ratio = np.linspace(0.3, 0.01, 9)
    basis = SimpleNamespace(explained_variance_ratio_=ratio / ratio.sum(), components_=comps)
    return SimpleNamespace(basis=basis, covariance=np.eye(9), groupings={}, density=None, layer_quality=None)


def test_a_new_figure_is_drawn_and_shown_once(monkeypatch, tmp_path):
    """One registry entry: build.draw writes its file and the page shows it once, with its caption."""
    def plot(ratio):
        return figures.explained_variance(np.cumsum(ratio))

    extra = figures.ReportFigure("basis.cumulative", "basis", lambda c: {"ratio": c["analysis"].basis
                                                                         .explained_variance_ratio_},
                                 plot, "basis-cumulative", lambda c: "Cumulative ratio <test>.",
                                 lambda c: "cumulative", heading=lambda c: "Cumulative")
    monkeypatch.setattr(figures, "FIGURES", figures.FIGURES + (extra,))
    monkeypatch.setattr(html, "FIGURES", figures.FIGURES)
    spec = {"metrics": ["kl_sym"], "figures": {"formats": ["png"], "dpi": 40, "eigenimage_components": 9,
                                               "top_k": 5}}
    reg = draw(_analysis(), {"groupings": {}}, spec, Path(tmp_path))
    assert set(reg) == {"basis.explained_variance", "basis.covariance", "basis.eigenimages", "basis.cumulative"}
    assert all((tmp_path / Path(f["png"]).name).is_file() for f in reg.values())
    r = {"basis": {"n_samples": 10}, "parameters": {"metrics": ["kl_sym"]}}
    page = html.basis_section(r, reg)
    for files in reg.values():
        assert page.count(f'src="{files["png"]}"') == 1
    assert "<h3>Cumulative</h3>" in page and "Cumulative ratio &lt;test&gt;." in page
