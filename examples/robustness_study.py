"""A robustness study on synthetic data with planted truth: does a factor matter only within a stratum, and does a
covariate drive layer degeneration?

    python examples/robustness_study.py OUTDIR [--models 80] [--filters 200000] [--seed 0] [--boot 1000]

The questions of Gavrikov & Keuper's follow-up on robust models ("Adversarial Robustness through the Lens of
Convolutional Filters", CVPR 2022 workshops), asked of a synthetic store where the answers are known
(``filtershift.synth``, ``robust_within`` and ``entropy_gain``):

1. Do robust and normal models have different filters? Compared over all models (``fs.drift`` with the
   permutation test ``fs.drift_test``), the difference drowns in the spread between models of different tasks and
   data: the planted effect lives in one training data set only.
2. Within each training data set (``fs.conditional_drift``, and a permutation test inside each set with enough
   models on each side to reach p <= 0.05, Benjamini-Hochberg adjusted over those sets): one set stands out.
   Inside it alone (``ds.filtershift.query``, as ``drift --where``) the drift is significant, and
   ``fs.drift_components`` says which eigenfilters carry it. A control split of the same models by an unplanted
   column (``Epochs``) is not.
3. Do bigger models have less diverse layers? Spearman's rho of the variance entropy with ``total_filters``, with a
   bootstrap interval over models (``fs.correlate``); and with the unplanted ``Epochs`` as a control.

It writes the store (``OUTDIR/planted.zarr`` with its truth sidecar), ``OUTDIR/findings.json`` (the numbers printed)
and ``OUTDIR/robustness_study.png``. The tests inside a training set read its filters again (a selection, as
``drift --where`` does); everything else reuses the three passes of the first question.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import false_discovery_control

import filtershift as fs
from filtershift.synth import read_truth, synthesize

STRATUM = "CIFAR-10"
ALPHA = 0.05
PERMUTATIONS = 999


def build(out: pathlib.Path, n_filters: int, n_models: int, seed: int) -> pathlib.Path:
    """The planted store: Robust matters only among the models trained on STRATUM; entropy falls with size."""
    return synthesize(out / "planted.zarr", n_filters=n_filters, n_models=n_models, seed=seed, format="zarr",
                      layer_meta=True, robust_within=STRATUM, entropy_gain=30, overwrite=True)


def pair(dist, test=None) -> dict:
    """The drift between the two groups of a two-group grouping, with its adjusted p-value and group sizes."""
    d = fs.drift(dist)
    out = {"drift": float(d.values[0, 1]),
           "n_models": dict(zip((str(g) for g in d["group_a"].values), dist["n_models"].values.tolist()))}
    if test is not None:
        out["p_adjusted"] = float(test["p_adjusted"].values[0, 1])
    return out


def permutation_test(dist):
    """The permutation test of every pair (``drift --permutations``), with this study's number and seed."""
    return fs.drift_test(dist, n_perm=PERMUTATIONS, seed=0)


def smallest_p(n_a: int, n_b: int, n_perm: int = PERMUTATIONS) -> float:
    """The smallest p-value a permutation test of n_a against n_b models can give (docs/analysis.md): a stratum
    that cannot reach ALPHA is left out of the tests, so that it does not dilute the adjustment (Tarone's rule)."""
    if min(n_a, n_b) < 1:
        return 1.0
    splits = math.comb(int(n_a + n_b), int(n_a))
    return (2 if n_a == n_b else 1) / splits if splits <= n_perm else 1 / (1 + n_perm)


def sides(found: dict) -> str:
    """'N robust vs M normal models' of a two-group finding."""
    n = found["n_models"]
    return f"{n['True']} robust vs {n['False']} normal models"


def interval(r) -> dict:
    """Spearman's rho of a correlate result, its interval and what it was computed over."""
    return {k: float(r[k]) for k in ("rho", "lower", "upper")} | {"n_layers": int(r["n_layers"]),
                                                                    "n_models": int(r["n_models"])}


def study(store: pathlib.Path, n_boot: int = 1000) -> tuple[dict, dict]:
    """Every question of the study; returns the findings and what the figure needs."""
    ds = fs.open_store(store)
    basis = ds.filtershift.basis()                                          # pass 1
    plain = fs.distributions(basis, by="robust")                            # passes 2 and 3
    found = {"plain": pair(plain, permutation_test(plain))}

    # screen: the drift inside every training data set, one basis and range for all (no new pass) ...
    strata = fs.conditional_drift(basis, by="robust", within="training_dataset")
    found["within"] = {"pooled": float(strata["pooled"].values[0, 1]), "strata": {}}
    edges = plain["bin_edges"].values
    groups = [str(g) for g in strata["group_a"].values]
    for s, d, n in zip(strata["stratum"].values, strata["drift"].values, strata["n_models"].values):
        if smallest_p(*n) <= ALPHA:     # ... and a permutation test where it can reach ALPHA
            inside = ds.filtershift.query(f'`Training-Dataset` == "{s}"')
            alone = fs.distributions(inside, basis, by="robust", range=(edges[0], edges[-1]))
            found["within"]["strata"][str(s)] = {"drift": float(d[0, 1]), "n_models": dict(zip(groups, n.tolist())),
                                                 "p_value": float(permutation_test(alone)["p_value"][0, 1])}
    tested = found["within"]["strata"]
    adjusted = false_discovery_control([t["p_value"] for t in tested.values()]) if tested else []
    for t, q in zip(tested.values(), adjusted):
        t["p_adjusted"] = float(q)

    inside = ds.filtershift.query(f'`Training-Dataset` == "{STRATUM}"')
    dist = fs.distributions(inside, by="robust")                 # the store's basis and range, as drift --where
    parts = fs.drift_components(dist).values[0, 1]
    found["stratum"] = {"name": STRATUM, **pair(dist, permutation_test(dist)),
                        "component_shares": (parts / parts.sum()).round(4).tolist()}
    control = fs.distributions(inside, by="Epochs:quantiles=2")
    found["stratum_control"] = {"by": "Epochs:quantiles=2", **pair(control, permutation_test(control))}

    quality = ds.filtershift.quality()                                      # the passes above, reused
    entropy = fs.correlate(ds, "variance_entropy_norm", "total_filters", quality=quality, n_boot=n_boot, seed=0)
    found["entropy_vs_size"] = interval(entropy)
    found["entropy_vs_epochs"] = interval(fs.correlate(ds, "variance_entropy_norm", "Epochs", quality=quality,
                                                       n_boot=n_boot, seed=0))
    return found, {"entropy": entropy}


def draw(found: dict, data: dict, path: pathlib.Path) -> None:
    """Left: robust vs normal drift in each training data set tested, and over all models. Right: layer entropy
    vs model size."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    tested = found["within"]["strata"]
    names = sorted(tested, key=lambda k: tested[k]["drift"])
    left.barh(names, [tested[k]["drift"] for k in names],
              color=["tab:red" if tested[k]["p_adjusted"] <= ALPHA else "tab:gray" for k in names])
    for i, k in enumerate(names):
        t = tested[k]
        left.annotate(f" {sides(t)}, p_adj {t['p_adjusted']:.2g}",
                      (t["drift"], i), va="center", fontsize=7)
    plain = found["plain"]
    left.axvline(plain["drift"], color="k", ls="--", lw=1,
                 label=f"all models: {plain['drift']:.3f}, p_adj {plain['p_adjusted']:.2g}")
    left.set_xlim(0, 1.6 * max([t["drift"] for t in tested.values()] + [plain["drift"]]))
    left.set_title("robust vs normal (kl_sym, nats) within each training data set\n(red: significant at "
                   f"{ALPHA:g} after Benjamini-Hochberg over the sets)", fontsize=9)
    left.tick_params(axis="y", labelsize=8)
    left.legend(fontsize=8, loc="lower right")
    e = data["entropy"]
    right.scatter(e["covariate_values"], e["metric_values"], s=5, alpha=0.4)
    right.set_xscale("log")
    right.set_xlabel("total_filters of the layer's model")
    right.set_ylabel("variance_entropy_norm of the layer")
    r = found["entropy_vs_size"]
    right.set_title(f"Spearman rho {r['rho']:+.2f} [{r['lower']:+.2f}, {r['upper']:+.2f}] (95%, models resampled)",
                    fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(found: dict, truth: dict) -> None:
    """What was planted (from the truth sidecar) and what the study found, with the numbers."""
    planted = truth["robustness"]
    p, s, c = found["plain"], found["stratum"], found["stratum_control"]
    print(f"planted: Robust changes the filters of models trained on {planted['stratum']} only (robust "
          f"{planted['robust_models']}, normal {planted['normal_models']}); variance entropy falls with model size")
    print(f"1. robust vs normal over all models: drift {p['drift']:.4f} nats, p_adj {p['p_adjusted']:.3g} "
          f"({sides(p)}): "
          + ("not significant" if p["p_adjusted"] > ALPHA else "significant"))
    tested = sorted(found["within"]["strata"].items(), key=lambda kv: -kv[1]["drift"])
    print(f"2. within each training data set whose test can reach p <= {ALPHA:g} (pooled over all sets "
          f"{found['within']['pooled']:.4f}): "
          + "; ".join(f"{k} {t['drift']:.4f} (p_adj {t['p_adjusted']:.3g})" for k, t in tested))
    lead = int(np.argmax(s["component_shares"]))
    print(f"   inside {s['name']} alone: drift {s['drift']:.4f}, p_adj {s['p_adjusted']:.3g} ({sides(s)}); "
          f"component {lead} carries {s['component_shares'][lead]:.0%} of it")
    print(f"   control, the same models split by {c['by']}: drift {c['drift']:.4f}, p_adj {c['p_adjusted']:.3g}")
    for key, what in (("entropy_vs_size", "total_filters"), ("entropy_vs_epochs", "Epochs (control)")):
        r = found[key]
        print(f"3. variance_entropy_norm vs {what}: rho {r['rho']:+.3f} [{r['lower']:+.3f}, {r['upper']:+.3f}] "
              f"over {r['n_layers']} layers of {r['n_models']} models")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--models", type=int, default=80)
    ap.add_argument("--filters", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates of the correlations")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    store = build(out, args.filters, args.models, args.seed)
    found, data = study(store, args.boot)
    (out / "findings.json").write_text(json.dumps(found, indent=1) + "\n")
    draw(found, data, out / "robustness_study.png")
    report(found, read_truth(store))
    print(f"wrote {out / 'findings.json'} and {out / 'robustness_study.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
