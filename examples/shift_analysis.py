"""Shift analysis of a filtershift store: basis, drift matrix with bootstrap intervals, and figures.

    python examples/shift_analysis.py STORE [--task Classification] [--by visual_category] [--out DIR]

Opens the store lazily, keeps one task's models (``filtershift.select``), fits the PCA basis of the scaled
filters, computes the drift matrix of a grouping and its 95% bootstrap intervals over models, and draws the
eigenimages and the matrix to PNG files. Three passes over the selected filters in all.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import filtershift as fs  # noqa: E402
from filtershift.stats import distributions, drift, drift_ci, fit_basis  # noqa: E402


def draw_eigenimages(basis, path: pathlib.Path) -> None:
    images = basis.eigenimages
    fig, axes = plt.subplots(1, images.sizes["component"], figsize=(1.6 * images.sizes["component"], 2.0))
    lim = float(np.abs(images).max())
    for j, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(images.isel(component=j), cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{j}: {basis.explained_variance_ratio_[j]:.1%}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("eigenimages (explained variance ratio)", fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_matrix(ci, path: pathlib.Path) -> None:
    d = ci["drift"]
    labels = [f"{g} ({n:,})" for g, n in zip(d["group_a"].values, d["n_filters_a"].values)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.5 * len(labels)))
    im = ax.imshow(d.values, cmap="viridis")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and np.isfinite(d.values[i, j]):
                ax.text(j, i, f"{d.values[i, j]:.2f}\n[{float(ci['lower'][i, j]):.2f}, "
                              f"{float(ci['upper'][i, j]):.2f}]", ha="center", va="center", fontsize=6,
                        color="w")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label=d.attrs["metric"])
    ax.set_title(f"drift by {' x '.join(ci['drift'].attrs['by'])}, {ci.attrs['level']:.0%} bootstrap intervals",
                 fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store")
    ap.add_argument("--task", default="Classification", help="keep the models of this task")
    ap.add_argument("--by", default="visual_category", help="grouping of the drift matrix")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--out", default=".", help="directory for the figures")
    args = ap.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = fs.open_store(args.store)
    sub = fs.select(ds, task=args.task)                       # lazy: no data read yet
    basis = fit_basis(sub)                                    # pass 1
    dist = distributions(sub, basis, by=args.by)              # passes 2 and 3
    ci = drift_ci(dist, n_boot=args.n_boot, seed=0)           # no pass: per-model histograms
    print(f"{int(sub.attrs['n_filters']):,} filters of task {args.task!r}; explained variance ratio "
          f"{np.round(basis.explained_variance_ratio_, 3).tolist()}")
    print(drift(dist).to_pandas().round(4).to_string())
    draw_eigenimages(basis, out / "eigenimages.png")
    draw_matrix(ci, out / "drift.png")
    print(f"figures: {out / 'eigenimages.png'}, {out / 'drift.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
