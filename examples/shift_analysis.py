"""Shift analysis of a filtershift store: basis, drift matrix with bootstrap intervals, and figures.

    python examples/shift_analysis.py STORE [--task Classification] [--by visual_category] [--out DIR]

Opens the store lazily, keeps one task's models (``ds.sel(task=...)``), fits the PCA basis of the scaled
filters of the whole store (``ds.filtershift.basis()``), and computes the drift matrix of a grouping of the
selection and its 95% bootstrap intervals over models. As the CNN-Filter-DB notebook, the selection is projected on
the whole store's basis and binned over the whole store's coefficient range (``basis="store"``, ``range="store"``,
the default: histograms of every subset share one axis); the same matrix in the selection's own basis and range
(``basis="selection"``, ``range="selection"``) follows, and each output says which it used. The eigenimages and
the matrix go to PNG files. The store's passes 1 and 2 serve every selection; the selection adds its pass 3. Then the
mean filter per task (a lazy ``groupby`` whose groups come from the index), the coefficients of a few filters
(``basis.transform``, lazy), and a sample of the selection saved to netCDF.
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import filtershift as fs


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
    sub = ds.sel(task=args.task)                              # lazy: no data read yet
    basis = ds.filtershift.basis()                            # pass 1 of the whole store: one basis for every subset
    dist = sub.filtershift.distributions(by=args.by)          # the store's pass 2 (its range), the selection's pass 3
    ci = fs.drift_ci(dist, n_boot=args.n_boot, seed=0)        # no pass: per-model histograms
    print(f"{sub.sizes['filter']:,} filters of {len(sub.filtershift.models)} models of task {args.task!r}; the "
          f"store's basis (of {basis.n_samples_:,} filters) explains {np.round(basis.explained_variance_ratio_, 3)}")
    own = sub.filtershift.distributions(by=args.by, basis="selection", range="selection")   # the selection alone
    for d in (dist, own):
        matrix = fs.drift(d)
        lo, hi = d.attrs["range"]
        print(f"{matrix.attrs['long_name']} ({matrix.attrs['units']}); basis of the {d.attrs['basis_scope']} "
              f"({d.attrs['basis_n_filters']:,} filters), range of the {d.attrs['range_scope']} [{lo:.3f}, {hi:.3f}]")
        print(matrix.to_pandas().round(4).to_string())
    draw_eigenimages(basis, out / "eigenimages.png")
    draw_matrix(ci, out / "drift.png")
    print(f"figures: {out / 'eigenimages.png'}, {out / 'drift.png'}")

    means = ds.filtershift.groupby("task").mean()             # lazy, labels from the index; one more pass
    print("mean filter per task (k = 3*y + x):")
    print(means["weights"].transpose("task", "k").to_pandas().round(4).to_string())
    sample = sub.isel(filter=slice(0, 1000))
    coef = basis.transform(sample)                            # lazy DataArray (filter, component), coords kept
    print(f"first coefficient of {coef.sizes['filter']} filters: mean {float(coef.isel(component=0).mean()):+.4f} "
          f"({coef.attrs['units']})")
    sample.to_netcdf(out / "sample.nc", engine="h5netcdf")    # a selection saves with its coordinates
    back = xr.open_dataset(out / "sample.nc", engine="h5netcdf")
    print(f"saved {back.sizes['filter']} filters with coordinates {sorted(back.coords)[:4]}... to {out / 'sample.nc'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
