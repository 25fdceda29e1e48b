"""Filter quality and degeneration: sparsity, variance entropy, orthogonality and weight norms per layer.

One concept per module, each importing only the ones above it in this list:

- :mod:`~filtershift.stats.quality.formulas`: the metrics per record from per-record statistics (``finalize``).
- :mod:`~filtershift.stats.quality.layer`: one layer held in memory (``layer_metrics``, ``layer_orthogonality``).
- :mod:`~filtershift.stats.quality.orthogonality_pass`: the orthogonality pass over whole layers of a store.
- :mod:`~filtershift.stats.quality.thresholds`: when a layer is degenerated (``Thresholds``, ``degeneration``).
- :mod:`~filtershift.stats.quality.tables`: ``layer_quality``, ``model_quality``, ``most_degenerated``,
  ``quality_by``.

The names below are the public API of quality (``from filtershift.stats.quality import layer_quality``).
"""

from filtershift.stats.quality.formulas import (
    METRICS,
    THRESHOLD_PARAMS,
    entropy_threshold,
    finalize,
    variance_entropy,
    weight_std,
)
from filtershift.stats.quality.layer import GRAM_ROWS, layer_metrics, layer_orthogonality, sparse_mask
from filtershift.stats.quality.orthogonality_pass import ORTHOGONALITY, orthogonality, orthogonality_values
from filtershift.stats.quality.tables import layer_quality, model_quality, most_degenerated, quality_by
from filtershift.stats.quality.thresholds import Thresholds, degeneration

__all__ = ["GRAM_ROWS", "METRICS", "ORTHOGONALITY", "THRESHOLD_PARAMS", "Thresholds", "degeneration",
           "entropy_threshold", "finalize", "layer_metrics", "layer_orthogonality", "layer_quality",
           "model_quality", "most_degenerated", "orthogonality", "orthogonality_values", "quality_by",
           "sparse_mask", "variance_entropy", "weight_std"]
