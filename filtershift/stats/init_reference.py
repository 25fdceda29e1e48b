"""Random-initialisation references: the coefficient distributions of freshly initialised 3x3 conv layers.

The common initialisers are sampled in numpy from their formulas (PyTorch's definitions, weights (out, in, 3, 3),
``fan_in = in_channels * 9``, ``fan_out = out_channels * 9``, float32 like torch):

- ``kaiming_uniform``: PyTorch ``Conv2d``'s default, ``kaiming_uniform_(w, a=sqrt(5))``: gain
  ``sqrt(2 / (1 + a^2)) = sqrt(1/3)``, U(-b, b) with ``b = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)``.
- ``kaiming_normal``: ``kaiming_normal_(w, mode="fan_in", nonlinearity="relu")``: N(0, 2 / fan_in).
- ``xavier_uniform``: U(-b, b) with ``b = sqrt(6 / (fan_in + fan_out))`` (gain 1).
- ``xavier_normal``: N(0, 2 / (fan_in + fan_out)) (gain 1).
- ``orthogonal``: the layer flattened to (out, in * 9), a Gaussian matrix made orthogonal by QR (signs fixed by
  diag(R)), transposed first when out < in * 9 so that the rows are orthonormal, then reshaped (gain 1).

Filters are scale-normalised (divided by their max |w|) before the PCA, so the gain and the bound, which only
multiply every weight by one constant, change nothing here: ``kaiming_uniform`` and ``xavier_uniform`` give the
same scaled-filter distribution (i.i.d. uniform entries), and so do ``kaiming_normal`` and ``xavier_normal``
(i.i.d. Gaussian entries); their pseudo-groups differ only by sampling error. The gain would change raw-weight
statistics (``max_abs``, the norms of :mod:`filtershift.stats.quality`), not these references. Orthogonal's gain is
irrelevant as well; what sets it apart is its structure: a filter is 9 entries of a unit vector of length
``in * 9`` (or of a column of length ``out``), close to Gaussian for wide layers but not independent, and the
filters of a layer are coupled by orthogonality (invisible to per-filter histograms). At the default spread
its reference is within sampling error of the Gaussian ones (drift 0.0006 nats from ``kaiming_normal``).

:func:`init_reference` histograms the sampled filters' coefficients on the basis, bins and range of a
:func:`~filtershift.stats.distributions` result with pass 3's own code (:func:`filtershift.stats.histograms.hist_chunk`:
values outside the range are dropped, except rounding-level excess) and appends them as pseudo-groups
``init:<name>``, one member (pseudo-model, negative ``member_model``) per sampled layer, so that ``drift``,
``drift_ci`` and ``drift_test`` work on the result. :func:`init_distance` gives each record's drift from one
reference (the ``init_distance`` column of ``filtershift quality --init NAME``).

Sampling error: two independent samples (seeds 0 and 1) of the same initialiser at the default size
(:data:`DEFAULT_LAYERS`, 217,088 filters), histogrammed in 70 bins on a basis fitted to the first one over both
samples' range, drift by 0.00067-0.00076 nats (kl_sym, the five initialisers); ``tests/test_init_reference.py``
checks it against :data:`SEED_ERROR` on a store's basis and range. A drift from a reference below about 0.002 is
sampling noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from filtershift.errors import InputError
from filtershift.metrics import metric as declared
from filtershift.stats.basis import default_basis
from filtershift.stats.cache import as_stats
from filtershift.stats.divergence import normalised_for, pairwise
from filtershift.stats.histograms import hist_chunk, normalise
from filtershift.stats.moments import K, coefficients

#: The initialisers, in a fixed order (each one's random stream is seeded by ``[seed, its index here]``).
INITS = ("kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal")
#: Default layer spread, (in_channels, out_channels): 4,096 + 16,384 + 65,536 + 131,072 = 217,088 filters.
DEFAULT_LAYERS = ((64, 64), (128, 128), (256, 256), (512, 256))
#: Default minimum number of sampled filters per initialiser (whole layers of the spread, cycled).
DEFAULT_N_FILTERS = 200_000
#: Bound on the kl_sym drift between two seeds of one initialiser at the default size, 70 bins (measured 0.0007-0.0008).
SEED_ERROR = 0.002
#: Prefix of the pseudo-group labels.
PREFIX = "init:"


def _fans(in_channels: int, out_channels: int) -> tuple[int, int]:
    return in_channels * K, out_channels * K


def _uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, size=shape)


def _kaiming_uniform(rng, i, o):
    fan_in, _ = _fans(i, o)
    gain = np.sqrt(2.0 / (1.0 + 5.0))  # leaky_relu gain with a = sqrt(5)
    return _uniform(rng, (o, i, 3, 3), gain * np.sqrt(3.0 / fan_in))


def _kaiming_normal(rng, i, o):
    fan_in, _ = _fans(i, o)
    return rng.normal(0.0, np.sqrt(2.0) / np.sqrt(fan_in), size=(o, i, 3, 3))


def _xavier_uniform(rng, i, o):
    fan_in, fan_out = _fans(i, o)
    return _uniform(rng, (o, i, 3, 3), np.sqrt(6.0 / (fan_in + fan_out)))


def _xavier_normal(rng, i, o):
    fan_in, fan_out = _fans(i, o)
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), size=(o, i, 3, 3))


def _orthogonal(rng, i, o):
    rows, cols = o, i * K
    flat = rng.normal(size=(rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return q.reshape(o, i, 3, 3)


_SAMPLERS = {"kaiming_uniform": _kaiming_uniform, "kaiming_normal": _kaiming_normal,
             "xavier_uniform": _xavier_uniform, "xavier_normal": _xavier_normal, "orthogonal": _orthogonal}


def _check_init(name) -> str:
    if name not in _SAMPLERS:
        raise InputError(f"unknown initialiser {name!r}; choose one of {', '.join(INITS)}.")
    return name


def _check_layers(layers) -> tuple:
    try:
        out = tuple((int(i), int(o)) for i, o in layers)
        ok = len(out) > 0 and all(i >= 1 and o >= 1 and (i, o) == tuple(x) for (i, o), x in zip(out, layers))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"layers must be a non-empty list of (in_channels, out_channels) positive integers; got "
                         f"{layers!r}.")
    return out


def layer_plan(n_filters: int = DEFAULT_N_FILTERS, layers=DEFAULT_LAYERS) -> list:
    """The (in, out) layers sampled per initialiser: ``layers`` in order, cycled, until ``n_filters`` is reached.

    Parameters
    ----------
    n_filters : int, default 200000
        Minimum number of filters (a positive integer); whole layers are sampled, so the total may exceed it.
    layers : sequence of (int, int), default DEFAULT_LAYERS
        The (in_channels, out_channels) spread.

    Returns
    -------
    list of (int, int)
        The layers, in sampling order.

    Raises
    ------
    filtershift.errors.InputError
        If ``n_filters`` is not a positive integer or ``layers`` is not a list of positive channel pairs.
    """
    if not isinstance(n_filters, (int, np.integer)) or isinstance(n_filters, bool) or n_filters < 1:
        raise InputError(f"n_filters must be a positive integer; got {n_filters!r}.")
    spread = _check_layers(layers)
    plan, total = [], 0
    while total < n_filters:
        i, o = spread[len(plan) % len(spread)]
        plan.append((i, o))
        total += i * o
    return plan


def sample_layer(init: str, in_channels: int, out_channels: int, rng) -> np.ndarray:
    """One freshly initialised 3x3 conv layer, float32 of shape (out_channels, in_channels, 3, 3).

    Parameters
    ----------
    init : str
        One of :data:`INITS`.
    in_channels, out_channels : int
        The layer's channels (``fan_in = in_channels * 9``, ``fan_out = out_channels * 9``).
    rng : numpy.random.Generator
        The random generator drawn from.

    Returns
    -------
    numpy.ndarray
        The weights, float32 (out_channels, in_channels, 3, 3).

    Raises
    ------
    filtershift.errors.InputError
        If ``init`` is unknown or the channels are not positive integers.
    """
    _check_init(init)
    i, o = _check_layers([(in_channels, out_channels)])[0]
    return _SAMPLERS[init](rng, i, o).astype(np.float32)


def sample_filters(init: str, n_filters: int = DEFAULT_N_FILTERS, layers=DEFAULT_LAYERS, seed: int = 0):
    """The filters of freshly initialised layers: (N, 9) float32 weights and the layer index of each filter.

    Parameters
    ----------
    init : str
        One of :data:`INITS`.
    n_filters : int, default 200000
        Minimum number of filters (whole layers of ``layers``, cycled; see :func:`layer_plan`).
    layers : sequence of (int, int), default DEFAULT_LAYERS
        The (in_channels, out_channels) spread.
    seed : int, default 0
        Non-negative seed; each initialiser draws from ``numpy.random.default_rng([seed, INITS.index(init)])``.

    Returns
    -------
    weights : numpy.ndarray
        Float32 (N, 9), the layers' filters in order, row-major like the store.
    layer : numpy.ndarray
        Int64 (N,), the index of each filter's layer in :func:`layer_plan`.

    Raises
    ------
    filtershift.errors.InputError
        If ``init``, ``n_filters``, ``layers`` or ``seed`` is invalid.
    """
    _check_init(init)
    plan = layer_plan(n_filters, layers)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer; got {seed!r}.")
    rng = np.random.default_rng([int(seed), INITS.index(init)])
    w = [sample_layer(init, i, o, rng).reshape(-1, K) for i, o in plan]
    layer = np.repeat(np.arange(len(plan), dtype=np.int64), [len(x) for x in w])
    return np.concatenate(w), layer


#: The last few references counted (:func:`_reference_counts`), so that :func:`init_reference` and
#: :func:`init_distance` on one basis and range (a report asks for both) sample and count each initialiser once.
_COUNTED: dict = {}
_COUNTED_MAX = 8


def _reference_counts(init, mean, comps, edges, fine_edges, n_filters, layers, seed):
    """Per sampled layer: pass-3 counts (layer, component, bin) and fine counts; plus the coefficient variance.
    Read-only arrays, remembered for the last :data:`_COUNTED_MAX` arguments (the sample is seeded)."""
    arrays = [np.asarray(x, np.float64) for x in (mean, comps, edges, fine_edges)]
    key = (init, repr(n_filters), repr(layers), repr(seed), *((x.shape, x.tobytes()) for x in arrays))
    if key not in _COUNTED:
        w, layer = sample_filters(init, n_filters, layers, seed)
        part = hist_chunk(w, layer, {"mean": mean, "components": comps, "edges": edges, "fine_edges": fine_edges})
        var = coefficients(w, mean, comps).var(axis=0, ddof=1)
        for x in (*part.values(), var):
            x.setflags(write=False)
        while len(_COUNTED) >= _COUNTED_MAX:
            _COUNTED.pop(next(iter(_COUNTED)))
        _COUNTED[key] = (part, len(w), var)
    return _COUNTED[key]


def _basis_arrays(basis, n_components):
    if not hasattr(basis, "components_"):
        raise InputError("init_reference needs the fitted Basis the distributions were computed on.")
    comps = np.ascontiguousarray(basis.components_, np.float64)
    if comps.shape[0] != n_components:
        raise InputError(f"the basis has {comps.shape[0]} components but the distributions {n_components}; pass "
                         "the basis the distributions were computed on.")
    return np.asarray(basis.mean_, np.float64), comps


def _extend(dist: xr.Dataset, extra: dict, labels: list) -> xr.Dataset:
    """``dist`` with ``extra`` appended along group / member; other variables along them: NaN (float) or, along
    group, the label (object); any other dtype is refused rather than given an invented value."""
    n_add = {"group": len(labels), "member": len(extra["member_group"])}
    out = {}
    for name, var in dist.variables.items():
        dim = "group" if "group" in var.dims else ("member" if "member" in var.dims else None)
        if dim is None:
            continue
        axis = var.dims.index(dim)
        if name in extra:
            add = np.asarray(extra[name])
        elif dim == "group" and var.dtype == object and var.ndim == 1:
            add = np.array(labels, dtype=object)
        elif np.issubdtype(var.dtype, np.floating):
            add = np.full(var.shape[:axis] + (n_add[dim],) + var.shape[axis + 1:], np.nan)
        else:
            raise InputError(f"init_reference cannot extend the distributions' variable {name!r} to the "
                             "initialisation groups; compute them without it.")
        out[name] = (var.dims, np.concatenate([var.values, add.astype(var.dtype)], axis=axis), var.attrs)
    data_vars = {k: out.get(k, dist[k].variable) for k in dist.data_vars}
    coords = {k: out.get(k, dist.coords[k].variable) for k in dist.coords}
    return xr.Dataset(data_vars, coords=coords, attrs=dist.attrs)


def init_reference(dist: xr.Dataset, basis, inits=INITS, *, n_filters: int = DEFAULT_N_FILTERS,
                   layers=DEFAULT_LAYERS, seed: int = 0) -> xr.Dataset:
    """``dist`` with one pseudo-group ``init:<name>`` per initialiser: freshly initialised filters, same histograms.

    The sampled filters are scaled, projected on ``basis`` and counted in ``dist``'s bins and range by pass 3's
    own code (values outside the range dropped, as pass 3 drops them for a given range). Each sampled layer is one
    member (pseudo-model id ``-1, -2, ...``), so ``drift``, ``drift_ci`` and ``drift_test`` treat the references
    like any group. Two seeds of one initialiser drift by about 0.0007 nats (kl_sym, default size, 70 bins).

    Parameters
    ----------
    dist : xarray.Dataset
        The result of :func:`~filtershift.stats.distributions`.
    basis : Basis
        The fitted basis ``dist`` was computed on.
    inits : sequence of str, default INITS
        Initialisers (names in :data:`INITS`), each appended once.
    n_filters : int, default 200000
        Minimum number of sampled filters per initialiser (whole layers, see :func:`layer_plan`).
    layers : sequence of (int, int), default DEFAULT_LAYERS
        The (in_channels, out_channels) spread of sampled layers.
    seed : int, default 0
        Seed of the samples (see :func:`sample_filters`).

    Returns
    -------
    xarray.Dataset
        ``dist`` with the groups ``init:<name>`` appended (``n_filters`` the sampled count, ``n_models`` the
        number of sampled layers, ``small`` by ``dist``'s thresholds, ``coef_var`` exact; float variables it does
        not know NaN) and their members; attrs ``init_seed``, ``init_layers``, ``init_dropped`` (per initialiser,
        the coefficients outside the range, summed over components).

    Raises
    ------
    filtershift.errors.InputError
        If ``dist`` is not a distributions result, ``basis`` does not match it, an initialiser is unknown or
        repeated or already in ``dist``, or ``n_filters``, ``layers`` or ``seed`` is invalid.

    Examples
    --------
    >>> import filtershift
    >>> ds = filtershift.open_store("filters.zarr")
    >>> basis = filtershift.fit_basis(ds)
    >>> dist = filtershift.init_reference(filtershift.distributions(ds, basis), basis)
    >>> filtershift.drift(dist).sel(group_b="init:kaiming_uniform")  # doctest: +SKIP
    """
    if not isinstance(dist, xr.Dataset) or not {"counts", "member_counts", "bin_edges"} <= set(dist.variables):
        raise InputError("init_reference needs the result of filtershift.distributions(ds, basis, by=...).")
    inits = [inits] if isinstance(inits, str) else list(inits)
    for name in inits:
        _check_init(name)
    labels = [PREFIX + name for name in inits]
    if not inits or len(set(labels)) != len(labels) or set(labels) & set(map(str, dist["group"].values)):
        raise InputError(f"inits must be distinct initialisers not yet in the distributions; got {inits!r}.")
    plan = layer_plan(n_filters, layers)
    mean, comps = _basis_arrays(basis, dist.sizes["component"])
    edges = dist["bin_edges"].values
    fine_edges = dist["fine_edges"].values if "fine_counts" in dist else np.zeros(0)
    counts, fine, member_counts, sizes, variances, dropped = [], [], [], [], [], {}
    for name in inits:
        part, n, var = _reference_counts(name, mean, comps, edges, fine_edges, n_filters, layers, seed)
        member_counts.append(part["counts"])
        counts.append(part["counts"].sum(0))
        if "fine_counts" in part:
            fine.append(part["fine_counts"].sum(0))
        sizes.append(n)
        variances.append(var)
        dropped[name] = int(n * comps.shape[0] - part["counts"].sum())
    n_groups, n_layers = dist.sizes["group"], len(plan)
    n_filters_new = np.array(sizes, np.int64)
    n_models_new = np.full(len(inits), n_layers, np.int64)
    extra = {
        "counts": np.stack(counts), "p": normalise(np.stack(counts), edges),
        "n_filters": n_filters_new, "n_models": n_models_new,
        "small": (n_filters_new < dist.attrs.get("min_filters", 0)) | (n_models_new < dist.attrs.get("min_models", 0)),
        "coef_var": np.stack(variances),
        "member_counts": np.concatenate(member_counts),
        "member_group": np.repeat(np.arange(n_groups, n_groups + len(inits), dtype=np.int64), n_layers),
        "member_model": -1 - np.arange(len(inits) * n_layers, dtype=np.int64),
    }
    if fine:
        extra["fine_counts"] = np.stack(fine)
    out = _extend(dist, extra, labels)
    out.attrs.update({"init_seed": int(seed), "init_layers": [list(x) for x in plan],
                      "init_dropped": [dropped[name] for name in inits], "init_names": list(inits)})
    return out


def init_distance(data, basis=None, init: str = "kaiming_uniform", *, metric: str = "kl_sym", bins: int = 70,
                  range=None, n_filters: int = DEFAULT_N_FILTERS, layers=DEFAULT_LAYERS,
                  seed: int = 0) -> pd.Series:
    """Per record: the drift between its coefficient histogram and an initialisation reference.

    Both histograms use the data's pass 3 (``bins`` over the global coefficient range, or ``range``) on ``basis``;
    small values mean a layer distributed like freshly initialised filters (untrained or barely trained).
    Records without filters give NaN. The reference's sampling error is about 0.0007 nats (kl_sym).

    Parameters
    ----------
    data : xarray.Dataset, RecordStats or Basis
        A filtershift Dataset, its :class:`RecordStats`, or a fitted :class:`Basis` (its statistics are reused).
    basis : Basis, optional
        The basis; default the full-rank basis of the data's statistics.
    init : str, default "kaiming_uniform"
        The reference initialiser, one of :data:`INITS`.
    metric : {"kl_sym", "js", "w1"}, default "kl_sym"
        The drift metric (see :mod:`filtershift.metrics`).
    bins : int, default 70
        Histogram bins per component.
    range : tuple of float, optional
        (lower, upper) of the histograms; default the global coefficient range of the data.
    n_filters, layers, seed
        The reference sample's size, layer spread and seed, as for :func:`init_reference`.

    Returns
    -------
    pandas.Series
        ``init_distance`` indexed by ``record`` (float64); attrs ``init``, ``metric``, ``seed``.

    Raises
    ------
    filtershift.errors.InputError
        If ``data`` is not a filtershift Dataset, RecordStats or Basis, or an argument is invalid.
    """
    _check_init(init)
    m = declared(metric)
    plan = layer_plan(n_filters, layers)
    stats = as_stats(data)
    basis = basis if basis is not None else (data if hasattr(data, "components_") else default_basis(stats))
    h = stats.histograms(basis, bins, range=range)
    edges = h["bin_edges"].values
    mean, comps = _basis_arrays(basis, h.sizes["component"])
    part, _, _ = _reference_counts(init, mean, comps, edges, np.zeros(0), n_filters, layers, seed)
    rec = h["counts"].values
    ref = np.broadcast_to(part["counts"].sum(0), rec.shape)
    p = normalised_for(h, np.stack([rec, ref], axis=1), metric)
    ratio = np.asarray(basis.explained_variance_ratio_, np.float64)
    values = pairwise(p, ratio, metric, np.diff(edges))[:, 0, 1]
    out = pd.Series(values, index=pd.Index(h["record"].values.astype(np.int64), name="record"), name="init_distance")
    out.attrs.update({"init": init, "metric": metric, "seed": int(seed), "layers": [list(x) for x in plan],
                      "units": m.units})
    return out

