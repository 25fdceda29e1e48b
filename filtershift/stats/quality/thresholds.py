"""When a layer counts as degenerated: the :class:`Thresholds` and the criteria columns of a quality table."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from filtershift.errors import InputError


@dataclass(frozen=True)
class Thresholds:
    """When a layer counts as degenerated (any of three criteria, each also a boolean column):

    - ``sparse``: sparsity >= ``sparsity`` (default 0.5: at least half the filters carry nothing above 1 % of
      the layer's largest weight, so half the layer's capacity is unused);
    - ``low_diversity``: clean normalised variance entropy <= ``entropy_low`` (default 0.5: the non-sparse filters
      span few directions; torchconvquality's README shows trained ResNet-18 layers at 0.59-0.92 and the
      degenerated last layer at 0.22);
    - ``random_like``: clean normalised variance entropy >= ``entropy_high`` (default 0.98: the reference says
      values over 1 mean filters as random as at initialisation; i.i.d. Gaussian or uniform layers of 16 to
      65,536 filters measured 0.991 at the lowest, 1.002-1.13 on average, see docs/quality.md).

    The entropy criteria need at least ``min_filters`` non-sparse filters (default 16; the threshold function is
    negative for n <= 2 and steep for small n).
    """

    sparsity: float = 0.5
    entropy_low: float = 0.5
    entropy_high: float = 0.98
    min_filters: int = 16

    def __post_init__(self):
        if not 0.0 < self.sparsity <= 1.0:
            raise InputError(f"thresholds.sparsity must be in (0, 1]; got {self.sparsity!r}.")
        if not 0.0 <= self.entropy_low < 1.0:
            raise InputError(f"thresholds.entropy_low must be in [0, 1); got {self.entropy_low!r}.")
        if not self.entropy_high > self.entropy_low:
            raise InputError(f"thresholds.entropy_high must exceed entropy_low ({self.entropy_low}); "
                             f"got {self.entropy_high!r}.")
        if int(self.min_filters) != self.min_filters or self.min_filters < 2:
            raise InputError(f"thresholds.min_filters must be an integer >= 2; got {self.min_filters!r}.")


def as_thresholds(value) -> Thresholds:
    """``value`` (None, a :class:`Thresholds` or a dict of its fields) as a :class:`Thresholds`."""
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(asdict(Thresholds()))
        if unknown:
            raise InputError(f"thresholds: unknown key(s) {sorted(unknown)}; use {sorted(asdict(Thresholds()))}.")
        return Thresholds(**value)
    raise InputError(f"thresholds must be a Thresholds, a dict or None; got {type(value).__name__}.")


def degeneration(table: pd.DataFrame, thresholds=None) -> pd.DataFrame:
    """The table with the criteria columns ``sparse``, ``low_diversity``, ``random_like``, ``degenerated`` and a
    ``degeneration`` score: the largest of sparsity / t.sparsity, (1 - clean norm) / (1 - t.entropy_low) and
    clean norm / t.entropy_high, so that each criterion's term reaches 1 at its threshold (for ranking)."""
    t = as_thresholds(thresholds)
    out = table.copy()
    ent = out["variance_entropy_clean_norm"].to_numpy(np.float64)
    enough = out["n_nonsparse"].to_numpy() >= t.min_filters
    sp = out["sparsity"].to_numpy(np.float64)
    out["sparse"] = sp >= t.sparsity
    out["low_diversity"] = enough & (ent <= t.entropy_low)
    out["random_like"] = enough & (ent >= t.entropy_high)
    out["degenerated"] = out["sparse"] | out["low_diversity"] | out["random_like"]
    terms = np.stack([sp / t.sparsity, np.where(enough, (1.0 - ent) / (1.0 - t.entropy_low), np.nan),
                      np.where(enough, ent / t.entropy_high, np.nan)])
    with np.errstate(invalid="ignore"):
        score = np.where(np.all(np.isnan(terms), axis=0), np.nan,
                         np.nanmax(np.where(np.isnan(terms), -np.inf, terms), axis=0))
    out["degeneration"] = score
    return out
