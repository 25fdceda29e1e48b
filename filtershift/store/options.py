"""One way to pass storage options: ``storage_options={...}`` (a dict for fsspec), as xarray and dask take it.

The former spelling, options as keyword arguments of :func:`~filtershift.store.dataset.open_store`,
:func:`~filtershift.store.verify.verify` and :func:`~filtershift.store.verify.info`, still works for now, with a
FutureWarning: an unknown keyword (a typo of ``label_rules``) was silently sent to the storage backend.
"""

from __future__ import annotations

import warnings

from filtershift.errors import InputError


def storage_options_of(storage_options, legacy: dict, func: str) -> dict:
    """The storage options of a call: ``storage_options`` merged with the deprecated keyword form ``legacy``."""
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InputError(f"{func}: storage_options must be a dict of fsspec options, e.g. "
                         f"{{'endpoint_url': 'http://localhost:9000'}}; got {type(storage_options).__name__}.")
    if legacy:
        warnings.warn(f"{func}: pass storage options as storage_options={{...}}; options as keyword arguments "
                      f"({', '.join(sorted(legacy))}) will be refused in a future version.", FutureWarning,
                      stacklevel=3)
    return {**legacy, **(storage_options or {})}
