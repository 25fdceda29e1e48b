"""The report specification (``report.yaml``): defaults, validation with messages naming key and allowed values,
and the spec hash that makes scheduled runs idempotent.

Only keys that change the report's content enter the spec hash; where it is written (``output``) and where it is
computed (``scheduler``) do not, nor does the store (identified separately by its manifest).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import yaml

from filtershift.errors import InputError
from filtershift.metrics import METRICS

#: Version of the results.json schema and of the report layout; part of the spec hash.
SCHEMA = "filtershift-report/1"

FORMATS = ("png", "svg")

DEFAULTS: dict = {
    "store": None,
    "output": None,
    "scheduler": None,
    "groupings": ["task", "visual_category", "training_dataset", "depth", "model"],
    "metrics": list(METRICS),
    "bins": 70,
    "keep_missing": False,
    "where": None,
    "within": [],
    "init": [],
    "explain": 3,
    "basis": "store",
    "range": None,
    "thresholds": {
        "min_filters": 1000,
        "min_models": 2,
        "sparsity_eps": 0.01,
    },
    "bootstrap": {
        "n_boot": 200,
        "seed": 0,
        "level": 0.95,
        "method": "basic",
        "max_groups": 40,
    },
    "significance": {
        "n_perm": 199,
        "seed": 0,
        "alpha": 0.05,
        "max_groups": 40,
    },
    "figures": {
        "formats": ["png"],
        "dpi": 110,
        "density_bins": 512,
        "density_range": [-3.3, 3.3],
        "density_vmin": 1e-5,
        "density_min_count": 10,
        "ridge_components": 9,
        "ridge_bins": 256,
        "eigenimage_components": 9,
        "max_groups": 40,
        "top_k": 25,
        "degenerated_top": 20,
    },
}

#: (key path, kind, lower bound, upper bound) for every scalar number.
_NUMBERS = [
    (("bins",), int, 2, 4096),
    (("explain",), int, 0, 20),
    (("thresholds", "min_filters"), int, 0, None),
    (("thresholds", "min_models"), int, 0, None),
    (("thresholds", "sparsity_eps"), float, 0.0, 0.999999),
    (("bootstrap", "n_boot"), int, 0, 100_000),
    (("bootstrap", "seed"), int, 0, None),
    (("bootstrap", "level"), float, 0.5, 0.999),
    (("bootstrap", "max_groups"), int, 2, 1000),
    (("significance", "n_perm"), int, 0, 1_000_000),
    (("significance", "seed"), int, 0, None),
    (("significance", "alpha"), float, 1e-6, 0.5),
    (("significance", "max_groups"), int, 2, 1000),
    (("figures", "dpi"), int, 30, 600),
    (("figures", "density_bins"), int, 0, 2048),
    (("figures", "density_vmin"), float, 1e-12, 0.5),
    (("figures", "density_min_count"), float, 0.0, 1e6),
    (("figures", "ridge_components"), int, 1, 9),
    (("figures", "ridge_bins"), int, 0, 4096),
    (("figures", "eigenimage_components"), int, 1, 9),
    (("figures", "max_groups"), int, 2, 200),
    (("figures", "top_k"), int, 2, 200),
    (("figures", "degenerated_top"), int, 1, 1000),
]


def load_config(source=None, overrides: dict | None = None) -> dict:
    """The validated spec: defaults, then ``source`` (a report.yaml path or a mapping), then non-None
    ``overrides``."""
    spec = copy.deepcopy(DEFAULTS)
    where = "report config"
    if isinstance(source, dict):
        _merge(spec, copy.deepcopy(source), where, ())
    elif source is not None:
        where = str(source)
        data = _read_yaml(Path(source))
        _merge(spec, data, where, ())
        for key in ("store", "output"):
            value = data.get(key)
            if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
                spec[key] = str(Path(source).resolve().parent / value)
    for key, value in (overrides or {}).items():
        if value is not None:
            spec[key] = value
    spec = validate(spec, where)
    if spec["store"] and "://" not in spec["store"]:
        spec["store"] = str(Path(spec["store"]).absolute())
    return spec


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: report config not found; give an existing YAML file (see "
                         "examples/report.yaml).") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the report config ({exc.strerror}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the syntax "
                         "(see examples/report.yaml).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: the report config must be a mapping of keys (store, groupings, metrics, ...), "
                         f"not a {type(data).__name__}.")
    return data


def _merge(spec: dict, data: dict, where: str, prefix: tuple) -> None:
    for key, value in data.items():
        name = ".".join(prefix + (str(key),))
        if key not in spec:
            raise InputError(f"{where}: unknown key {name!r}; allowed keys here: {sorted(spec)}.")
        if isinstance(spec[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"{where}: {name!r} must be a mapping with keys {sorted(spec[key])}.")
            _merge(spec[key], value, where, prefix + (key,))
        else:
            spec[key] = value


def _get(spec: dict, path: tuple):
    node = spec
    for p in path:
        node = node[p]
    return node


def _set(spec: dict, path: tuple, value) -> None:
    node = spec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def validate(spec: dict, where: str = "report config") -> dict:
    """Check types and ranges in place and return ``spec``; errors name the key and the allowed values."""
    for key in ("store", "output", "scheduler"):
        if spec[key] is not None and not isinstance(spec[key], (str, Path)):
            raise InputError(f"{where}: {key!r} must be a string (a path or address); got {spec[key]!r}.")
        if spec[key] is not None:
            spec[key] = str(spec[key])
    groupings = spec["groupings"]
    if isinstance(groupings, str):
        groupings = [groupings]
    if not isinstance(groupings, list) or not groupings:
        raise InputError(f"{where}: 'groupings' must be a non-empty list of grouping names (task, visual_category, "
                         "training_dataset, depth, model, a meta column) or lists of names to combine.")
    clean = []
    for g in groupings:
        if isinstance(g, str) and g.strip():
            clean.append(g.strip())
        elif isinstance(g, list) and g and all(isinstance(x, str) and x.strip() for x in g):
            clean.append([x.strip() for x in g] if len(g) > 1 else g[0].strip())
        else:
            raise InputError(f"{where}: 'groupings' entry {g!r} must be a name or a list of names.")
    names = [grouping_name(g) for g in clean]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: 'groupings' lists the same grouping twice: {names}.")
    spec["groupings"] = clean
    metrics = spec["metrics"]
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not metrics or any(m not in METRICS for m in metrics):
        raise InputError(f"{where}: 'metrics' must be a non-empty list of {list(METRICS)}; got {spec['metrics']!r}.")
    spec["metrics"] = list(dict.fromkeys(metrics))
    formats = spec["figures"]["formats"]
    formats = [formats] if isinstance(formats, str) else formats
    if not isinstance(formats, list) or "png" not in formats or any(f not in FORMATS for f in formats):
        raise InputError(f"{where}: 'figures.formats' must be a list of {list(FORMATS)} that includes 'png'; "
                         f"got {spec['figures']['formats']!r}.")
    spec["figures"]["formats"] = list(dict.fromkeys(formats))
    spec["figures"]["density_range"] = _density_range(spec["figures"]["density_range"], where)
    for path, kind, lo, hi in _NUMBERS:
        value = _get(spec, path)
        name = ".".join(path)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok = ok and float(value).is_integer()
        if ok:
            value = kind(value)
            ok = (lo is None or value >= lo) and (hi is None or value <= hi)
        if not ok:
            bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise InputError(f"{where}: {name!r} must be {'an integer' if kind is int else 'a number'} {bounds}; "
                             f"got {_get(spec, path)!r}.")
        _set(spec, path, value)
    if not isinstance(spec["keep_missing"], bool):
        raise InputError(f"{where}: 'keep_missing' must be true or false; got {spec['keep_missing']!r}.")
    if spec["where"] is not None:
        from filtershift.store.query import parse

        if not isinstance(spec["where"], str):
            raise InputError(f"{where}: 'where' must be an expression in quotes (docs/analysis.md); got "
                             f"{spec['where']!r}.")
        parse(spec["where"])
    from filtershift.stats.divergence import INTERVALS

    if spec["bootstrap"]["method"] not in INTERVALS:
        raise InputError(f"{where}: 'bootstrap.method' must be one of {list(INTERVALS)}; got "
                         f"{spec['bootstrap']['method']!r}.")
    spec["within"] = _within(spec["within"], where)
    spec["init"] = _inits(spec["init"], where)
    for key, choices in (("basis", ("store", "selection")), ("range", (None, "store", "selection"))):
        if spec[key] not in choices:
            also = "; or null, that of 'basis'" if key == "range" else ""
            raise InputError(f"{where}: {key!r} must be 'store' (of the whole store, as the CNN-Filter-DB notebook) "
                             f"or 'selection' (of the records of 'where' alone){also}; got {spec[key]!r}.")
    if spec["bootstrap"]["n_boot"] == 1:
        raise InputError(f"{where}: 'bootstrap.n_boot' must be 0 (no intervals) or at least 2; got 1.")
    return spec


def _density_range(value, where: str) -> list:
    """``figures.density_range``: [lower, upper], finite, lower < upper (both axes of the 2D density)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or value[0] >= value[1]:
        raise InputError(f"{where}: 'figures.density_range' must be [lower, upper], two finite numbers with lower < "
                         f"upper (the coefficient range of both axes, default [-3.3, 3.3]); got {value!r}.")
    return [float(value[0]), float(value[1])]


def _within(value, where: str) -> list:
    """``within``: one ``{by: NAME, strata: NAME}`` or a list of them (none by default); returns the list."""
    entries = [] if value is None else [value] if isinstance(value, dict) else value
    form = ("'within' takes {by: GROUPING, strata: GROUPING} or a list of them, e.g. {by: Robust, strata: "
            "training_dataset}: the groups of 'by' compared inside each stratum of 'strata'")
    if not isinstance(entries, list):
        raise InputError(f"{where}: {form}; got {value!r}.")
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"by", "strata"}:
            raise InputError(f"{where}: {form}; got {entry!r}.")
        names = [entry[k].strip() if isinstance(entry[k], str) else "" for k in ("by", "strata")]
        if not all(names):
            raise InputError(f"{where}: 'within' entry {entry!r}: 'by' and 'strata' must each name one grouping "
                             "(a column, depth or a binned numeric column such as total_filters:quantiles=5).")
        if names[0] == names[1]:
            raise InputError(f"{where}: 'within' entry {entry!r} names the same grouping twice; choose two.")
        out.append({"by": names[0], "strata": names[1]})
    keys = [within_name(e) for e in out]
    if len(set(keys)) != len(keys):
        raise InputError(f"{where}: 'within' lists the same comparison twice: {keys}.")
    return out


def _inits(value, where: str) -> list:
    """``init``: ``true`` (every initialiser), ``false``/none (none), a name or a list of names."""
    if value is None or value is False or value == []:
        return []
    from filtershift.stats.init_reference import INITS

    if value is True:
        return list(INITS)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or any(n not in INITS for n in names):
        raise InputError(f"{where}: 'init' must be true (all of them), false, or a list of {list(INITS)}; got "
                         f"{value!r}.")
    return list(dict.fromkeys(names))


def within_name(entry: dict) -> str:
    """The display and file-name key of a ``within`` entry: '<by> within <strata>'."""
    return f"{entry['by']} within {entry['strata']}"


def grouping_name(grouping) -> str:
    """The display and file-name key of a grouping: its name, or names joined with '+'."""
    return grouping if isinstance(grouping, str) else "+".join(grouping)


def content_spec(spec: dict) -> dict:
    """The part of the spec that determines the report's content."""
    return {k: v for k, v in spec.items() if k not in ("store", "output", "scheduler")}


def spec_hash(spec: dict) -> str:
    """SHA-256 (hex) of the content spec and the report schema."""
    blob = json.dumps({"schema": SCHEMA, "spec": content_spec(spec)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()
