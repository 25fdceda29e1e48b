"""What a result's values are, for users and for other tools (CF-style ``long_name``, ``units``, ``description``).

Every DataArray and Dataset the public API returns carries the three attrs, and so does every data variable of a
result Dataset. Units: ``"1"`` for dimensionless values (ratios, probabilities, counts of filters), ``"nats"``
for KL and JS divergences (natural log), ``"coefficient units"`` for values on the coefficient axis (coefficients
of filters scaled to max|w| = 1, projected on the basis; W1 distances), ``"coefficient units squared"`` for
their variances.
"""

from __future__ import annotations


def describe(obj, long_name: str, units: str, description: str):
    """Set ``long_name``, ``units`` and ``description`` on a DataArray, Variable or Dataset; returns it."""
    obj.attrs.update({"long_name": long_name, "units": units, "description": description})
    return obj


def describe_vars(ds, table: dict):
    """Describe each data variable of ``ds`` named in ``table`` (name -> (long_name, units, description)),
    keeping a description already there; returns ``ds``."""
    for name, (long_name, units, description) in table.items():
        if name in ds.data_vars:
            keep = ds[name].attrs.get("description")
            describe(ds[name], long_name, units, keep or description)
    return ds
