"""What a result's values are, for users and for other tools (CF-style ``long_name``, ``units``, ``description``).

Every DataArray and Dataset the public API returns carries the three attrs, and so does every data variable of a
result Dataset. Units: ``"1"`` for dimensionless values (ratios, probabilities, counts of filters), ``"nats"``
for KL and JS divergences (natural log), ``"coefficient units"`` for values on the coefficient axis (coefficients
of filters scaled to max|w| = 1, projected on the basis; W1 distances), ``"coefficient units squared"`` for
their variances.
"""

from __future__ import annotations

#: long_name, units, description of the variables of the statistics' results, by variable name: the basis
#: (``Basis.to_dataset``, ``group_bases``, ``eigenimages``, ``coefficients``) and :func:`distributions`.
ATTRS = {
    "mean": ("mean scaled filter", "1", "mean of the filters scaled to max|w| = 1, per kernel entry k"),
    "components": ("principal components", "1", "unit vectors over k, by decreasing explained variance; the "
                   "largest |entry| of each is positive"),
    "eigenimages": ("eigenimages", "1", "the principal components as 3x3 images (row-major, k = 3*y + x)"),
    "explained_variance": ("explained variance", "coefficient units squared",
                           "variance of the coefficients along each component (ddof=1)"),
    "explained_variance_ratio": ("explained variance ratio", "1", "share of the total variance per component"),
    "coefficients": ("PCA coefficients", "coefficient units",
                     "(filter / max|filter| - mean) projected on the components"),
    "n_filters": ("filters", "1", "filters in the group"),
    "n_models": ("models", "1", "models with filters in the group"),
    "small": ("small group", "1", "fewer filters than min_filters or fewer models than min_models"),
    "valid": ("valid basis", "1", "False for groups of fewer than 2 filters (their values are NaN)"),
    "p": ("probability per bin", "1", "normalised histogram per group and component"),
    "counts": ("coefficients per bin", "1", "count of the group's coefficients in each bin"),
    "member_counts": ("coefficients per bin and member", "1", "histogram of each (group, model) member"),
    "member_group": ("member's group", "1", "group index of each member"),
    "member_model": ("member's model", "1", "model_id of each member"),
    "fine_counts": ("coefficients per fine bin", "1", "count of the group's coefficients in each fine bin"),
    "coef_var": ("coefficient variance", "coefficient units squared",
                 "exact variance of the group's coefficients per component (ddof=1)"),
}


def describe(obj, long_name: str, units: str, description: str):
    """Set ``long_name``, ``units`` and ``description`` on a DataArray, Variable or Dataset; returns it."""
    obj.attrs.update({"long_name": long_name, "units": units, "description": description})
    return obj


def describe_vars(ds, table: dict | None = None):
    """Describe each data variable of ``ds`` named in ``table`` (name -> (long_name, units, description); default
    :data:`ATTRS`), keeping a description already there; returns ``ds``."""
    table = ATTRS if table is None else table
    for name, (long_name, units, description) in table.items():
        if name in ds.data_vars:
            keep = ds[name].attrs.get("description")
            describe(ds[name], long_name, units, keep or description)
    return ds


#: The variables of :meth:`RecordStats.moments` (pass 1), :meth:`RecordStats.range_sparsity` (pass 2) and
#: :meth:`RecordStats.histograms` (pass 3): per-record partial statistics, "scaled" meaning filter / max|filter|.
PASS_ATTRS = {
    "n": ("filters", "1", "filters in the record"),
    "scaled_sum": ("sum of scaled filters", "1", "sum over the record's filters of filter / max|filter|, per k"),
    "scaled_comoment": ("co-moment of scaled filters", "1",
                        "centred sum of outer products of the scaled filters over the record (float64)"),
    "raw_sum": ("sum of filters", "weight units", "sum of the record's filters as stored, per k"),
    "raw_comoment": ("co-moment of filters", "weight units squared",
                     "centred sum of outer products of the filters as stored over the record (float64)"),
    "raw_absmax": ("largest |weight|", "weight units", "max |w| over the record's filters"),
    "filter_absmax_min": ("smallest filter max|w|", "weight units", "min over the record's filters of max|w|"),
    "raw_l1_sum": ("sum of L1 norms", "weight units", "sum over the record's filters of sum |w|"),
    "raw_l2_sum": ("sum of L2 norms", "weight units", "sum over the record's filters of sqrt(sum w^2)"),
    "model_id": ("model", "1", "model_id of the record"),
    "conv_depth": ("conv depth", "1", "depth of the record's conv layer in its model (0 = first)"),
    "conv_depth_norm": ("normalised conv depth", "1", "conv depth / deepest conv depth of the model"),
    "coef_min": ("smallest coefficient", "coefficient units", "min of the record's coefficients per component"),
    "coef_max": ("largest coefficient", "coefficient units", "max of the record's coefficients per component"),
    "sparse_count": ("sparse filters", "1", "filters whose max|w| is below sparsity_eps x the record's max|w|"),
    "nonsparse_n": ("non-sparse filters", "1", "filters of the record that are not sparse"),
    "nonsparse_sum": ("sum of non-sparse filters", "weight units", "as raw_sum, over the non-sparse filters"),
    "nonsparse_comoment": ("co-moment of non-sparse filters", "weight units squared",
                           "as raw_comoment, over the non-sparse filters"),
    "counts": ("coefficients per bin", "1", "count of the record's coefficients in each bin, per component"),
    "fine_counts": ("coefficients per fine bin", "1", "count of the record's coefficients in each fine bin"),
}

