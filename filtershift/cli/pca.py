"""``filtershift pca STORE``: the PCA basis of the scaled filters (one pass over the data)."""

import json

from filtershift.cli import computing
from filtershift.cli._args import add_storage_options, add_where


def register(sub) -> None:
    p = sub.add_parser("pca", help="PCA basis of the scaled filters (mean, components, explained variance)",
                       description="Fit the PCA basis of the filters scaled by their largest |w| (one pass).")
    p.add_argument("store", help="store path or URL")
    p.add_argument("--json", action="store_true",
                   help="print JSON: mean, components, explained_variance, explained_variance_ratio, n_samples")
    add_where(p)
    add_storage_options(p)
    computing(p, run)


def run(args) -> int:
    from filtershift.stats import fit_basis

    basis = fit_basis(args.dataset)
    if args.json:
        print(json.dumps({"mean": basis.mean_.tolist(), "components": basis.components_.tolist(),
                          "explained_variance": basis.explained_variance_.tolist(),
                          "explained_variance_ratio": basis.explained_variance_ratio_.tolist(),
                          "n_samples": int(basis.n_samples_)}, indent=1))
        return 0
    print(f"{basis.n_samples_:,} filters; mean {' '.join(f'{v:+.4f}' for v in basis.mean_)}")
    print(f"{'component':>9} {'ratio':>8} {'cumulative':>10}  eigenimage (rows y=0..2)")
    cum = 0.0
    for j, (ratio, comp) in enumerate(zip(basis.explained_variance_ratio_, basis.components_)):
        cum += ratio
        img = " | ".join(" ".join(f"{v:+.2f}" for v in comp[3 * y:3 * y + 3]) for y in range(3))
        print(f"{j:>9} {ratio:>8.4f} {cum:>10.4f}  {img}")
    return 0
