"""filtershift: distribution shifts and quality of trained 3x3 convolution filters, out of core.

The public API is imported lazily so that ``import filtershift`` stays fast and optional extras (onnx, torch)
are only needed by the functions that use them. The first access to it registers the ``ds.filtershift`` accessor
(:mod:`filtershift.accessor`).
"""

from __future__ import annotations

import importlib

from filtershift._version import __version__

_API = {
    "open_store": "filtershift.store.dataset",
    "from_arrays": "filtershift.store.dataset",
    "select": "filtershift.store.dataset",
    "query": "filtershift.store.dataset",
    "records": "filtershift.store.dataset",
    "models": "filtershift.store.dataset",
    "groupers": "filtershift.store.dataset",
    "record_table": "filtershift.store.dataset",
    "convert": "filtershift.store.convert",
    "verify": "filtershift.store.verify",
    "synthesize": "filtershift.synth",
    "read_model": "filtershift.ingest",
    "add_models": "filtershift.store.append",
    "record_stats": "filtershift.stats",
    "fit_basis": "filtershift.stats",
    "distributions": "filtershift.stats",
    "drift": "filtershift.stats",
    "drift_ci": "filtershift.stats",
    "drift_test": "filtershift.stats",
    "conditional_drift": "filtershift.stats",
    "drift_components": "filtershift.stats",
    "top_bins": "filtershift.stats",
    "correlate": "filtershift.stats.correlate",
    "group_bases": "filtershift.stats",
    "align_to": "filtershift.stats",
    "kde": "filtershift.stats",
    "init_reference": "filtershift.stats",
    "init_distance": "filtershift.stats",
    "density2d": "filtershift.stats",
    "Basis": "filtershift.stats",
    "RecordStats": "filtershift.stats",
    "layer_quality": "filtershift.stats.quality",
    "model_quality": "filtershift.stats.quality",
    "quality_by": "filtershift.stats.quality",
    "most_degenerated": "filtershift.stats.quality",
    "layer_metrics": "filtershift.stats.quality",
    "compare": "filtershift.compare",
    "build_report": "filtershift.report",
    "run_demo": "filtershift.demo",
    "scheduler_context": "filtershift.cluster",
}

__all__ = ["__version__", *_API]  # noqa: PLE0604 - the names of the lazy API table above


def __getattr__(name: str):
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'filtershift' has no attribute {name!r}") from None
    # The ds.filtershift accessor is registered before any Dataset reaches the user (the store layer, below the
    # statistics, cannot import it); the module imports only xarray until a method runs.
    importlib.import_module("filtershift.accessor")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(__all__)
