"""The numbers of a report: one set of per-record statistics (three passes; the third also counts the 2D density)
serves the basis, every grouping, every metric, the intervals, the 2D density and the quality tables.

Nothing here draws or writes; :mod:`filtershift.report.figures` and :mod:`filtershift.report.build` consume
:class:`Analysis`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.report.config import grouping_name, within_name

log = logging.getLogger("filtershift.report")


@dataclass
class GroupingResult:
    """Everything computed for one grouping: distributions, drift per metric, intervals, orderings, bases."""

    name: str
    by: object
    dist: xr.Dataset
    drift: dict
    ci: dict = field(default_factory=dict)
    order: np.ndarray | None = None
    cluster_order: np.ndarray | None = None
    top: np.ndarray | None = None
    bases: xr.Dataset | None = None
    alignment: dict | None = None
    kde: xr.DataArray | None = None
    test: xr.Dataset | None = None
    names: list | None = None
    init: xr.Dataset | None = None
    init_drift: xr.DataArray | None = None
    attribution: dict | None = None

    @property
    def labels(self) -> list[str]:
        return [str(g) for g in self.dist["group"].values]

    @property
    def display(self) -> list[str]:
        """What figures and tables show for each group: ``names`` (models by name, task and training set) when
        set, else the labels."""
        return self.names if self.names is not None else self.labels

    @property
    def size(self) -> int:
        return int(self.dist.sizes["group"])


@dataclass
class Analysis:
    """The results behind a report."""

    info: dict
    basis: object
    moments: xr.Dataset
    covariance: np.ndarray
    groupings: dict
    density: xr.DataArray | None
    layer_quality: pd.DataFrame | None
    model_quality: pd.DataFrame | None
    passes: int
    notes: list = field(default_factory=list)
    within: dict = field(default_factory=dict)
    scope: dict = field(default_factory=dict)


def mean_drift(matrix: np.ndarray) -> np.ndarray:
    """Per group, the mean of its drift to every other group (diagonal and NaN left out)."""
    m = np.array(matrix, dtype=np.float64, copy=True)
    np.fill_diagonal(m, np.nan)
    with np.errstate(all="ignore"):
        valid = np.isfinite(m).sum(1)
        total = np.where(np.isfinite(m), m, 0.0).sum(1)
        return np.where(valid > 0, total / np.maximum(valid, 1), np.nan)


def order_by_mean_drift(matrix: np.ndarray) -> np.ndarray:
    """Group indices sorted by increasing mean drift (the paper's ordering); groups without values last."""
    md = mean_drift(matrix)
    return np.lexsort((md, ~np.isfinite(md)))


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Hierarchical (average linkage, optimal leaf order) ordering of groups by their drift matrix."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    m = np.array(matrix, dtype=np.float64, copy=True)
    n = m.shape[0]
    if n < 3:
        return np.arange(n)
    finite = np.isfinite(m)
    fill = float(np.nanmax(np.where(finite, m, np.nan))) * 2 if finite.any() else 1.0
    m = np.where(finite, m, fill)
    m = (m + m.T) / 2
    np.fill_diagonal(m, 0.0)
    cond = squareform(np.clip(m, 0.0, None), checks=False)
    z = linkage(cond, method="average")
    if n <= 2000:
        z = optimal_leaf_ordering(z, cond)
    return leaves_list(z).astype(np.int64)


def largest_pairs(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the ``k`` pairs (a < b) of largest finite value in ``matrix``, largest first."""
    d = np.asarray(matrix, np.float64)
    a, b = np.triu_indices(d.shape[0], 1)
    keep = np.isfinite(d[a, b])
    a, b = a[keep], b[keep]
    order = np.argsort(-d[a, b], kind="stable")[:k]
    return a[order], b[order]


def top_shifted(matrix: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` groups of largest mean drift, in decreasing order."""
    md = mean_drift(matrix)
    order = np.lexsort((-np.nan_to_num(md, nan=-np.inf), ~np.isfinite(md)))
    return order[:k]


def align_bases(bases: xr.Dataset, components) -> dict:
    """Each valid group's components matched to the global ``components`` (``stats.align.align_to`` says how).

    Arrays (group, component): ``order`` (-1 for a group without a basis), ``signs``, ``cosines``, ``ratio`` (the
    matched component's explained variance ratio), ``tied``; ``aligned`` (group, component, k); NaN, 0 and False
    where a group has no basis; ``rtol``, the tie tolerance."""
    from filtershift.stats.align import TIE_RTOL, align_to

    comps = bases["components"].values
    ratio = bases["explained_variance_ratio"].values
    g, c, k = comps.shape
    out = {"order": np.full((g, c), -1, np.int64), "signs": np.zeros((g, c), np.int64),
           "cosines": np.full((g, c), np.nan), "ratio": np.full((g, c), np.nan), "tied": np.zeros((g, c), bool),
           "aligned": np.full((g, c, k), np.nan), "rtol": TIE_RTOL}
    for i in np.flatnonzero(bases["valid"].values):
        a = align_to(components, comps[i], ratio[i])
        for key in ("order", "signs", "cosines", "tied", "aligned"):
            out[key][i] = a[key]
        out["ratio"][i] = ratio[i][a["order"]]
    return out


def covariance(basis) -> np.ndarray:
    """Covariance (9 x 9, ddof=1) of the scaled filters, rebuilt from the full-rank basis."""
    c = np.asarray(basis.components_, np.float64)
    return c.T @ np.diag(np.asarray(basis.explained_variance_, np.float64)) @ c


def analyse(ds: xr.Dataset, info: dict, spec: dict, *, step=lambda name: None) -> Analysis:
    """Run the whole analysis of ``ds`` for ``spec``; ``step(name)`` is called as each stage starts."""
    from filtershift.stats import (
        conditional_drift,
        density2d,
        distributions,
        drift,
        drift_ci,
        drift_test,
        group_bases,
        init_reference,
        kde,
        record_stats,
    )
    from filtershift.stats.histograms import Density2D
    from filtershift.stats.scope import resolve, store_stats

    th, boot, fig, sig = spec["thresholds"], spec["bootstrap"], spec["figures"], spec["significance"]
    pair = Density2D((0, 1), fig["density_bins"], fig["density_range"]) if fig["density_bins"] else None
    stats = record_stats(ds)
    step("basis")
    scope = resolve(stats, spec["basis"], spec["range"])
    basis = scope.basis
    log.info("basis fitted on %s filters; first three components explain %.1f%% of the variance",
             f"{basis.n_samples_:,}", 100 * float(np.sum(basis.explained_variance_ratio_[:3])))
    groupings = {}
    notes = []
    for by in spec["groupings"]:
        name = grouping_name(by)
        step(f"grouping {name}")
        # pass 3 (the first time) counts the 2D density too
        stats.histograms(basis, spec["bins"], fig["ridge_bins"], range=scope.range, density=pair)
        dist = distributions(stats, basis, by=by, bins=spec["bins"], fine_bins=fig["ridge_bins"],
                             min_filters=th["min_filters"],
                             min_models=th["min_models"], keep_missing=spec["keep_missing"], range=scope.range)
        g = GroupingResult(name, by, dist, {m: drift(dist, m) for m in spec["metrics"]})
        first = g.drift[spec["metrics"][0]].values
        g.order = order_by_mean_drift(first)
        if g.size > fig["max_groups"]:
            g.cluster_order = cluster_order(first)
            g.top = top_shifted(first, fig["top_k"])
            notes.append(f"{name}: {g.size} groups, shown clustered and as the {len(g.top)} most shifted")
        if boot["n_boot"] and 2 <= g.size <= boot["max_groups"]:
            g.ci = {m: drift_ci(dist, m, n_boot=boot["n_boot"], seed=boot["seed"], level=boot["level"],
                             method=boot["method"])
                    for m in spec["metrics"]}
        elif boot["n_boot"] and g.size > boot["max_groups"]:
            notes.append(f"{name}: no bootstrap intervals ({g.size} groups > bootstrap.max_groups "
                         f"{boot['max_groups']})")
        if sig["n_perm"] and 2 <= g.size <= sig["max_groups"]:
            g.test = drift_test(dist, spec["metrics"][0], n_perm=sig["n_perm"], seed=sig["seed"], alpha=sig["alpha"])
        elif sig["n_perm"] and g.size > sig["max_groups"]:
            notes.append(f"{name}: no permutation test ({g.size} groups > significance.max_groups "
                         f"{sig['max_groups']})")
        if 1 <= g.size <= fig["max_groups"]:
            g.bases = group_bases(stats, by, min_filters=th["min_filters"], min_models=th["min_models"],
                                  keep_missing=spec["keep_missing"])
            g.alignment = align_bases(g.bases, basis.components_)
            g.kde = kde(dist, points=256, components=list(range(fig["ridge_components"])))
        if name == "model":
            g.names = model_names(stats.tables()[1], g.labels)
        groupings[name] = g
        log.info("grouping %s: %d groups (%d small)", name, g.size, int(dist["small"].values.sum()))
    metric0 = spec["metrics"][0]
    first = next(iter(groupings.values()))
    if spec["explain"]:
        first.attribution = attribution(first, metric0, spec["explain"])
    within = {}
    for entry in spec["within"]:
        name = within_name(entry)
        step(f"strata: {name}")
        c = conditional_drift(stats, basis, by=entry["by"], within=entry["strata"], metric=metric0,
                              bins=spec["bins"], min_filters=th["min_filters"], min_models=th["min_models"],
                              keep_missing=spec["keep_missing"], range=scope.range)
        if c.sizes["group"] > fig["max_groups"]:
            notes.append(f"{name}: not shown ({c.sizes['group']} groups > figures.max_groups {fig['max_groups']}; "
                         "filtershift drift --within gives every number)")
            continue
        within[name] = c
    if spec["init"]:
        step("initialisation references")
        target = next((g for g in groupings.values() if 1 <= g.size <= fig["max_groups"]), None)
        if target is None:
            notes.append(f"no grouping has at most figures.max_groups ({fig['max_groups']}) groups: the "
                         "initialisation groups are added to no drift matrix")
        else:
            # without the ridge plots' fine counts, so that init_distance below reuses the same sample
            coarse = target.dist.drop_vars(["fine_counts", "fine_edges"], errors="ignore")
            target.init = init_reference(coarse, basis, inits=spec["init"])
            target.init_drift = drift(target.init, metric0)
    density = None
    if pair is not None:
        step("2D density")
        density = density2d(stats, basis, pair.components, pair.bins, range=pair.range,
                            min_count=fig["density_min_count"])
    step("quality")
    layer_q, model_q = quality_tables(stats, th["sparsity_eps"])
    if spec["init"]:
        add_init_distance(layer_q, stats, basis, spec["init"], metric0, spec["bins"], scope.range)
    store = store_stats(stats)
    passes = stats.passes + (store.passes if store is not stats else 0)
    return Analysis(info, basis, stats.moments(), covariance(basis), groupings, density, layer_q, model_q,
                    passes, notes, within, {**scope.attrs(), "range": list(scope.range)})


def attribution(g: GroupingResult, metric: str, k: int) -> dict | None:
    """The ``k`` most drifted pairs of ``g`` under ``metric``: their per-component terms
    (:func:`~filtershift.stats.drift_components`, on the groups of those pairs only) and leading bins
    (:func:`~filtershift.stats.top_bins`)."""
    from filtershift.stats import drift_components, top_bins

    a, b = largest_pairs(g.drift[metric].values, k)
    if not len(a):
        return None
    involved = np.unique(np.concatenate([a, b]))
    at = {int(x): i for i, x in enumerate(involved)}
    parts = drift_components(g.dist.isel(group=involved), metric).values
    labels = g.labels
    return {"metric": metric, "pairs": list(zip(a.tolist(), b.tolist())),
            "drift": g.drift[metric].values[a, b],
            "contributions": np.stack([parts[at[i], at[j]] for i, j in zip(a, b)]),
            "top_bins": [top_bins(g.dist, labels[i], labels[j], metric, top=3) for i, j in zip(a, b)]}


def add_init_distance(layer: pd.DataFrame, stats, basis, inits: list, metric: str, bins: int,
                      range=None) -> None:
    """Per layer, the drift from each initialiser (``init_distance_<name>``, :func:`~filtershift.init_distance`
    on the report's basis, bins and range: no new pass), the smallest (``init_distance``) and its initialiser
    (``init_nearest``)."""
    from filtershift.stats import init_distance

    records = layer["record"].to_numpy()
    cols = [f"init_distance_{name}" for name in inits]
    seed = 0
    for name, col in zip(inits, cols):
        d = init_distance(stats, basis, name, metric=metric, bins=bins, range=range, seed=seed)
        layer[col] = d.reindex(records).to_numpy()
    values = layer[cols].to_numpy(np.float64)
    known = np.isfinite(values).any(1)
    nearest = np.argmin(np.where(np.isfinite(values), values, np.inf), axis=1)
    layer["init_distance"] = np.where(known, values[np.arange(len(layer)), nearest], np.nan)
    layer["init_nearest"] = pd.array(np.where(known, np.array(inits, dtype=object)[nearest], None), dtype="string")
    layer.attrs["init"] = {"inits": list(inits), "metric": metric, "bins": bins, "seed": seed}


def model_names(models: pd.DataFrame, ids: list) -> list[str]:
    """``model (task, training set)`` for each model id of ``ids`` from the models table (the columns a store has
    of ``model``/``Name``, ``Task``, ``Training-Dataset``); the id where the table has no name."""
    by_id = models.set_index(models["model_id"].astype(str))
    name = next((c for c in ("model", "Name") if c in models.columns), None)
    about = [c for c in ("Task", "Training-Dataset") if c in models.columns]
    out = []
    for i in ids:
        row = by_id.loc[i] if i in by_id.index else None
        if row is None or name is None or pd.isna(row[name]):
            out.append(i)
            continue
        extra = ", ".join(str(row[c]) for c in about if not pd.isna(row[c]))
        out.append(f"{row[name]} ({extra})" if extra else str(row[name]))
    return out


def quality_tables(stats, eps: float):
    """Per-layer and per-model quality tables, finalized from the same passes 1 and 2 as the shift analysis."""
    from filtershift.stats.quality import layer_quality, model_quality

    layer = layer_quality(stats, sparsity_eps=eps)
    return layer, model_quality(layer)
