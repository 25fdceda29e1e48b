"""``filtershift pca STORE``: the PCA basis of the scaled filters (one pass over the data)."""

import json

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where


def register(sub) -> None:
    p = sub.add_parser("pca", help="PCA basis of the scaled filters (mean, components, explained variance)",
                       description="Fit the PCA basis of the filters scaled by their largest |w| (one pass).")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true",
                   help="print JSON: mean, components, explained_variance, explained_variance_ratio, n_samples, "
                        "basis (store or selection), where; with --where and --basis store, n_selected and "
                        "selection_variance_ratio (the selection's variance share along each store component)")
    add_where(p)
    p.add_argument("--basis", choices=("store", "selection"), default="store",
                   help="with --where: the basis of the whole store (default, as the CNN-Filter-DB notebook), with "
                        "the selection's variance along its components, or the basis of the selected filters")
    add_storage_options(p)
    computing(p, run)


def run(args) -> int:
    import numpy as np

    from filtershift.stats.pca import scaled_totals
    from filtershift.stats.scope import choose_basis

    stats, basis, basis_scope, _ = choose_basis(args.dataset, args.basis)
    n_sel = args.dataset.sizes["filter"]
    extra = {}
    if args.where and args.basis == "store":
        m = stats.moments()
        n, _, com = scaled_totals(m["n"].values, m["scaled_sum"].values, m["scaled_comoment"].values)
        comps = np.asarray(basis.components_, np.float64)
        var = np.einsum("jk,kl,jl->j", comps, com, comps) / max(n - 1, 1)
        extra = {"n_selected": int(n_sel), "selection_variance_ratio": (var / var.sum()).tolist()}
    if args.json:
        print(json.dumps({"mean": basis.mean_.tolist(), "components": basis.components_.tolist(),
                          "explained_variance": basis.explained_variance_.tolist(),
                          "explained_variance_ratio": basis.explained_variance_ratio_.tolist(),
                          "n_samples": int(basis.n_samples_), "basis": basis_scope, "where": args.where,
                          **extra}, indent=1))
        return 0
    whose = "the whole store" if basis_scope == "store" else "the selection"
    print(f"basis of {whose}: {basis.n_samples_:,} filters; mean {' '.join(f'{v:+.4f}' for v in basis.mean_)}")
    if extra:
        print(f"selection (--where): {n_sel:,} filters; 'selected' is its share of variance along each component")
    sel = extra.get("selection_variance_ratio")
    print(f"{'component':>9} {'ratio':>8} {'cumulative':>10}" + (f" {'selected':>8}" if sel else "")
          + "  eigenimage (rows y=0..2)")
    cum = 0.0
    for j, (ratio, comp) in enumerate(zip(basis.explained_variance_ratio_, basis.components_)):
        cum += ratio
        img = " | ".join(" ".join(f"{v:+.2f}" for v in comp[3 * y:3 * y + 3]) for y in range(3))
        print(f"{j:>9} {ratio:>8.4f} {cum:>10.4f}" + (f" {sel[j]:>8.4f}" if sel else "") + f"  {img}")
    return 0
