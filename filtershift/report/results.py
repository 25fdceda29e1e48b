"""``results.json`` (schema ``filtershift-report/1``, see docs/report.md) and the ``tables/`` of a run.

Every number behind a figure is here: small arrays inline, large ones (histograms, the 2D density, matrices of
groupings with more than ``figures.max_groups`` groups, per-layer quality) as Parquet + CSV tables referenced
by relative path. NaN and infinities are written as ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from filtershift.report.config import SCHEMA, content_spec
from filtershift.report.publish import safe_name
from filtershift.stats.grouping import groups


def clean(value):
    """JSON-safe copy: numpy to lists and scalars, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def write_table(df: pd.DataFrame, tables: Path, stem: str) -> dict:
    """``tables/stem.parquet`` and ``.csv``; returns their paths relative to the run directory. The CSV is written
    by pyarrow (17x faster than pandas on a 647-model drift matrix of 418,609 rows: 0.10 s against 1.67 s; the same
    values, missing ones empty, strings quoted, booleans true/false)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)   # what DataFrame.to_parquet(index=False) writes
    pq.write_table(table, tables / f"{stem}.parquet")
    pacsv.write_csv(table, tables / f"{stem}.csv", pacsv.WriteOptions(quoting_style="needed"))
    return {"parquet": f"tables/{stem}.parquet", "csv": f"tables/{stem}.csv"}


def histogram_table(dist) -> pd.DataFrame:
    """Long table of a grouping's histograms: group, component, bin, bin edges, count, normalised p."""
    counts = dist["counts"].values
    g, c, b = np.meshgrid(np.arange(counts.shape[0]), np.arange(counts.shape[1]), np.arange(counts.shape[2]),
                          indexing="ij")
    labels = np.array([str(x) for x in dist["group"].values], dtype=object)
    return pd.DataFrame({"group": labels[g.ravel()], "component": c.ravel(), "bin": b.ravel(),
                         "bin_lower": dist["bin_lower"].values[b.ravel()],
                         "bin_upper": dist["bin_upper"].values[b.ravel()],
                         "count": counts.ravel(), "p": dist["p"].values.ravel()})


def matrix_table(da, names: list | None = None) -> pd.DataFrame:
    """Long table of a drift matrix: group_a, group_b, value (and name_a, name_b when the groups have names)."""
    labels = np.array([str(x) for x in da["group_a"].values], dtype=object)
    n = len(labels)
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    out = pd.DataFrame({"group_a": labels[a.ravel()], "group_b": labels[b.ravel()], "value": da.values.ravel()})
    if names is not None:
        names = np.array(names, dtype=object)
        out.insert(2, "name_a", names[a.ravel()])
        out.insert(3, "name_b", names[b.ravel()])
    return out


def model_labels(moments, key: str, keep_missing: bool = False) -> pd.Series | None:
    """Label of every model under grouping ``key`` (None when the store has no such grouping); a missing label is
    None (left out of a pandas groupby) unless ``keep_missing``."""
    try:
        g = groups(moments, key, keep_missing=keep_missing)
    except Exception:  # noqa: BLE001 - the store lacks this grouping column
        return None
    lab = np.array(g.labels + [None], dtype=object)
    per_record = pd.Series(lab[np.where(g.codes >= 0, g.codes, len(g.labels))],
                           index=moments["model_id"].values)
    return per_record[~per_record.index.duplicated()]


def share_3x3(models: pd.DataFrame, task_labels: pd.Series | None) -> dict | None:
    """Share of 3x3 filters among all convolution filters, from the CNN-Filter-DB meta columns when present."""
    if "3x3_filter_share" not in models:
        return None
    share = pd.to_numeric(models["3x3_filter_share"], errors="coerce")
    out = {"method": "mean over models of the 3x3_filter_share meta column", "overall": float(share.mean())}
    if "(3, 3) filters" in models and "total_filters" in models:
        num = pd.to_numeric(models["(3, 3) filters"], errors="coerce")
        den = pd.to_numeric(models["total_filters"], errors="coerce")
        ok = num.notna() & den.notna() & (den > 0)
        if ok.any():
            out = {"method": "sum of '(3, 3) filters' / sum of total_filters over models",
                   "overall": float(num[ok].sum() / den[ok].sum())}
    if task_labels is not None:
        task = models["model_id"].map(task_labels).to_numpy()
        out["by_task"] = {str(k): float(v) for k, v in share.groupby(task).mean().items()}
    return out


#: Quality groupings of the report (layer-table columns), when the store has them.
QUALITY_BY = ("depth", "task", "visual_category")
QUALITY_METRICS = ("sparsity", "variance_entropy_norm", "variance_entropy_clean_norm")


#: The criteria columns of a quality table (:func:`filtershift.stats.quality.degeneration`) as a reader names them.
REASONS = {"sparse": "sparse", "low_diversity": "low diversity", "random_like": "random-like"}


def quality_summary(layer: pd.DataFrame, model: pd.DataFrame, top: int, eps: float,
                    names: dict | None = None) -> dict:
    """Per grouping (depth decile, task, visual category): layer counts, filter-weighted means, medians and
    degenerated share of each metric (:func:`filtershift.stats.quality.quality_by`); the most degenerated layers
    (with the model's name from ``names``, {model id: name}, and the criteria that flag them) and models
    (:func:`~filtershift.stats.quality.most_degenerated`)."""
    from filtershift.stats.quality import most_degenerated, quality_by

    by = {}
    for key in (k for k in QUALITY_BY if k in layer):
        q = quality_by(layer, key, metrics=QUALITY_METRICS, quantiles=(0.5,))
        rows = []
        for i, group in enumerate(q["group"].values):
            row = {"group": str(group), "layers": int(q["n_rows"][i]), "filters": int(q["n_filters"][i])}
            for j, metric in enumerate(q["metric"].values):
                row[f"{metric} mean"] = float(q["mean"][i, j])
                row[f"{metric} median"] = float(q["quantiles"][i, j, 0])
            row["degenerated share"] = float(q["degenerated_share"][i])
            rows.append(row)
        by[key] = rows
    layer_cols = [c for c in ("model_id", "conv_depth", "layer", "task", "n", "sparsity", "variance_entropy_norm",
                              "variance_entropy_clean_norm", "degeneration", "degenerated") if c in layer]
    model_cols = [c for c in ("model_id", "task", "visual_category", "n_layers", "n_filters", "sparsity",
                              "variance_entropy_clean_norm", "n_degenerated", "degenerated_share",
                              "degenerated_filter_share") if c in model]
    worst = most_degenerated(layer, top)
    worst_layers = worst[layer_cols]
    if names is not None:
        worst_layers.insert(1, "model", worst["model_id"].astype(str).map(names).fillna("").to_numpy())
    flags = [c for c in REASONS if c in worst]
    worst_layers.insert(len(worst_layers.columns) - 1, "reason", [
        ", ".join(REASONS[c] for c in flags if row[c]) for _, row in worst[flags].iterrows()])
    worst_models = most_degenerated(model, top)[model_cols]
    if names is not None:
        worst_models.insert(1, "model", worst_models["model_id"].astype(str).map(names).fillna("").to_numpy())
    return {"sparsity_eps": eps, "thresholds": clean(layer.attrs.get("thresholds")), "n_layers": int(len(layer)),
            "n_degenerated": int(layer["degenerated"].sum()), "metrics": list(QUALITY_METRICS), "by": by,
            "most_degenerated_layers": _records(worst_layers), "most_degenerated_models": _records(worst_models)}


def _records(df: pd.DataFrame) -> list:
    return clean([{k: (str(v) if isinstance(v, str) or k in ("task", "visual_category", "layer") else v)
                   for k, v in row.items()} for row in df.astype(object).to_dict("records")])


def layer_table(layer: pd.DataFrame) -> pd.DataFrame:
    """The layer table for Parquet/CSV: categorical labels as plain strings."""
    out = layer.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].astype(str)
    return out


def grouping_results(g, spec: dict, tables: Path, table_index: dict) -> dict:
    """The numbers of one grouping: labels, sizes, orders, matrices (+ intervals), group bases."""
    dist = g.dist
    slug = safe_name(g.name)
    inline = g.size <= spec["figures"]["max_groups"]
    out = {"by": list(dist.attrs["by"]), "slug": slug, "size": g.size, "labels": g.labels, "names": g.names,
           "n_filters": dist["n_filters"].values, "n_models": dist["n_models"].values,
           "small": dist["small"].values, "order": g.order, "display": "matrix" if inline else "clustered",
           "cluster_order": g.cluster_order, "top": g.top, "metrics": {}, "mean_drift": {}, "bootstrap": None,
           "dropped": {"filters": dist.attrs["n_filters_dropped"], "models": dist.attrs["n_models_dropped"]},
           "missing_labels": dist.attrs["missing_labels"]}
    from filtershift.report.analysis import mean_drift

    for metric, da in g.drift.items():
        entry = {}
        out["mean_drift"][metric] = mean_drift(da.values)
        if inline:
            entry["matrix"] = da.values
        else:
            files = write_table(matrix_table(da, g.names), tables, f"drift-{slug}-{metric}")
            table_index[f"drift-{slug}-{metric}"] = files
            entry["table"] = files["parquet"]
        if metric in g.ci:
            ci = g.ci[metric]
            for part in ("lower", "upper", "std"):
                entry[part] = ci[part].values
        out["metrics"][metric] = entry
    if g.test is not None:
        t = g.test
        upper = np.triu_indices(g.size, 1)
        tested = np.isfinite(t["p_value"].values[upper])
        out["significance"] = {"metric": t.attrs["metric"], "n_perm": t.attrs["n_perm"], "seed": t.attrs["seed"],
                               "alpha": t.attrs["alpha"], "method": t.attrs["method"],
                               "n_pairs": int(len(upper[0])), "n_tested": int(tested.sum()),
                               "n_significant": int(t["significant"].values[upper].sum())}
        if inline:
            out["significance"].update({"p_value": t["p_value"].values, "p_adjusted": t["p_adjusted"].values})
    if g.ci:
        first = next(iter(g.ci.values()))
        out["bootstrap"] = {k: first.attrs[k] for k in ("n_boot", "seed", "level", "method")}
    table_index[f"histograms-{slug}"] = write_table(histogram_table(dist), tables, f"histograms-{slug}")
    out["histograms_table"] = f"tables/histograms-{slug}.parquet"
    out["bin_edges"] = dist["bin_edges"].values
    if g.bases is not None:
        out["group_bases"] = {"explained_variance_ratio": g.bases["explained_variance_ratio"].values,
                              "components": g.bases["components"].values, "valid": g.bases["valid"].values}
        if g.alignment is not None:
            a, valid = g.alignment, g.bases["valid"].values
            out["group_bases"].update({key: [row if ok else None for row, ok in zip(a[key], valid)]
                                       for key in ("order", "signs", "cosines", "tied")})
            out["group_bases"]["tie_rtol"] = a["rtol"]
    if g.attribution is not None:
        out["attribution"] = attribution_results(g.attribution, g.labels)
    if g.init is not None:
        ref = g.init
        out["init"] = {"metric": g.init_drift.attrs["metric"], "inits": ref.attrs["init_names"],
                       "labels": [str(x) for x in ref["group"].values], "n_filters": ref["n_filters"].values,
                       "n_models": ref["n_models"].values, "small": ref["small"].values,
                       "matrix": g.init_drift.values, "order": [*g.order, *range(g.size, ref.sizes["group"])],
                       "seed": ref.attrs["init_seed"], "layers": ref.attrs["init_layers"],
                       "dropped": ref.attrs["init_dropped"]}
    return out


def attribution_results(a: dict, labels: list) -> dict:
    """The most drifted pairs: each one's drift, per-component terms and shares of it, and leading bins."""
    pairs = []
    for (i, j), total, parts, bins in zip(a["pairs"], a["drift"], a["contributions"], a["top_bins"]):
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = parts / total if total > 0 else np.full_like(parts, np.nan)
        pairs.append({"a": labels[i], "b": labels[j], "index": [i, j], "drift": total, "contributions": parts,
                      "shares": shares, "top_bins": bins.to_dict("records")})
    return {"metric": a["metric"], "pairs": pairs}


def within_results(c) -> dict:
    """One ``within`` comparison (:func:`~filtershift.conditional_drift`): per stratum and pooled, with weights
    (filter counts, as integers)."""
    return {"by": c.attrs["by"], "within": c.attrs["within"], "metric": c.attrs["metric"],
            "labels": [str(x) for x in c["group_a"].values], "strata": [str(x) for x in c["stratum"].values],
            "pooled": c["pooled"].values, "pooled_weight": c["pooled_weight"].values.astype(np.int64),
            "drift": c["drift"].values, "weight": c["weight"].values.astype(np.int64),
            "n_filters": c["n_filters"].values, "n_models": c["n_models"].values}


def closest_to_init(layer: pd.DataFrame, top: int) -> list:
    """The ``top`` layers of smallest ``init_distance`` (the ones that look untrained), NaN last."""
    cols = [c for c in ("model_id", "model", "name", "conv_depth", "conv_depth_norm", "layer", "n", "init_nearest",
                        "init_distance") if c in layer]
    rows = layer.sort_values("init_distance", kind="stable", na_position="last").head(top)[cols]
    return _records(rows)


def build_results(analysis, spec: dict, run: dict, tables: Path, models: pd.DataFrame,
                  records: pd.DataFrame) -> tuple[dict, dict]:
    """(results dict, table index) for a finished analysis; writes the tables."""
    table_index: dict = {}
    b = analysis.basis
    results = {
        "schema": SCHEMA,
        "run": run,
        "store": analysis.info,
        "parameters": content_spec(spec),
        "basis": {"n_samples": int(b.n_samples_), "mean": b.mean_, "components": b.components_,
                  "explained_variance": b.explained_variance_,
                  "explained_variance_ratio": b.explained_variance_ratio_, "covariance": analysis.covariance,
                  **analysis.scope},
        "groupings": {name: grouping_results(g, spec, tables, table_index)
                      for name, g in analysis.groupings.items()},
        "notes": list(analysis.notes),
        "within": {name: dict(within_results(c), slug=safe_name(name)) for name, c in analysis.within.items()},
    }
    results["overview"] = {"share_3x3": share_3x3(models, model_labels(analysis.moments, "task",
                                                                        spec["keep_missing"]))}
    if analysis.density is not None:
        d = analysis.density
        counts = d.values
        xs, ys = np.nonzero(counts)
        table_index["density2d"] = write_table(pd.DataFrame({"x_bin": xs, "y_bin": ys, "count": counts[xs, ys]}),
                                               tables, "density2d")
        results["density2d"] = {"components": d.attrs["components"], "bins": d.attrs["bins"],
                                "bins_requested": d.attrs["bins_requested"], "min_count": d.attrs["min_count"],
                                "range": d.attrs["range"], "edges": d.attrs["bin_edges"],
                                "vmin": spec["figures"]["density_vmin"], "total": int(counts.sum()),
                                "outside": d.attrs["n_filters"] - int(counts.sum()),
                                "table": "tables/density2d.parquet",
                                "layout": "x_bin indexes the first component, y_bin the second"}
    results["quality"] = None
    if analysis.layer_quality is not None:
        layer, model = analysis.layer_quality, analysis.model_quality
        table_index["layer_quality"] = write_table(layer_table(layer), tables, "layer_quality")
        table_index["model_quality"] = write_table(layer_table(model), tables, "model_quality")
        from filtershift.report.analysis import model_names

        ids = models["model_id"].astype(str).tolist()
        results["quality"] = quality_summary(layer, model, spec["figures"]["degenerated_top"],
                                             spec["thresholds"]["sparsity_eps"],
                                             names=dict(zip(ids, model_names(models, ids))))
        if "init" in layer.attrs:
            from filtershift.stats.init_reference import SEED_ERROR

            results["quality"]["init"] = {**layer.attrs["init"], "seed_error_kl_sym": SEED_ERROR,
                                          "columns": ["init_distance", "init_nearest",
                                                      *(f"init_distance_{n}" for n in layer.attrs["init"]["inits"])],
                                          "closest_layers": closest_to_init(layer, spec["figures"]["degenerated_top"])}
    results["headline"] = headline(results, spec)
    results["tables"] = table_index
    return results, table_index


#: The headline key of the degenerated layers: a count, as the quality card shows (runs before 2026-12-02 had a
#: share of layers under ``degenerated layers``; the history page labels that one so).
DEGENERATED = "degenerated layers (count)"


def headline(results: dict, spec: dict) -> dict:
    """A few numbers tracked across runs on the history page."""
    out = {"filters": results["store"]["n_filters"], "models": results["store"]["n_models"],
           "explained variance c0-c2": float(np.sum(results["basis"]["explained_variance_ratio"][:3]))}
    metric = spec["metrics"][0]
    for name, g in results["groupings"].items():
        md = np.asarray(g["mean_drift"][metric], np.float64)
        if np.isfinite(md).any():
            out[f"mean {metric} by {name}"] = float(np.nanmean(md))
    q = results.get("quality")
    if q and q.get("n_degenerated") is not None and q["n_layers"]:
        out[DEGENERATED] = int(q["n_degenerated"])
    return out


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(clean(results), indent=1, allow_nan=False) + "\n", encoding="utf-8")
