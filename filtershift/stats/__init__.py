"""Shift analysis: out-of-core PCA basis, per-group distributions, drift and per-record statistics.

Three passes over the filters serve the whole analysis however many groupings are asked: (1) per-record moments,
(2) per-record coefficient range and sparsity, (3) per-record histograms (and, when asked, the 2D histogram of two
components from the same coefficients). Everything else (bases per group, distributions, drift matrices, bootstrap
intervals, KDE) is computed from the small per-record results.
"""

from filtershift.stats.align import align_to
from filtershift.stats.basis import Basis, fit_basis, group_bases
from filtershift.stats.cache import RecordStats, record_stats
from filtershift.stats.distributions import density2d, distributions
from filtershift.stats.divergence import drift, drift_ci, drift_components, top_bins
from filtershift.stats.init_reference import init_distance, init_reference
from filtershift.stats.kde import kde
from filtershift.stats.significance import drift_test
from filtershift.stats.strata import conditional_drift

__all__ = ["Basis", "RecordStats", "align_to", "conditional_drift", "density2d", "distributions", "drift", "drift_ci",
           "drift_components", "drift_test", "fit_basis", "group_bases", "init_distance", "init_reference", "kde",
           "record_stats", "top_bins"]
