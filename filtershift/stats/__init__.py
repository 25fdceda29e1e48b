"""Shift analysis: out-of-core PCA basis, per-group distributions, drift and per-record statistics.

Three passes over the filters serve the whole analysis however many groupings are asked: (1) per-record moments,
(2) per-record coefficient range and sparsity, (3) per-record histograms. Everything else (bases per group,
distributions, drift matrices, bootstrap intervals, KDE) is computed from the small per-record results.
"""

from filtershift.stats.basis import Basis, fit_basis, group_bases
from filtershift.stats.cache import RecordStats, record_stats
from filtershift.stats.distributions import density2d, distributions
from filtershift.stats.divergence import drift, drift_ci
from filtershift.stats.init_reference import init_distance, init_reference
from filtershift.stats.kde import kde
from filtershift.stats.significance import drift_test

__all__ = ["Basis", "RecordStats", "density2d", "distributions", "drift", "drift_ci", "drift_test", "fit_basis",
           "group_bases", "init_distance", "init_reference", "kde", "record_stats"]
