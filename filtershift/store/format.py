"""The on-disk layout of a filtershift store (see docs/format.md): the only module that knows paths and keys.

A store is a Zarr v3 group; its manifest lives in the group attributes under ``"filtershift"`` and is written
last and atomically (zarr's local store writes through a temporary file and a rename; object stores put whole
objects), so a reader sees one committed snapshot or the next, never a mix.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import numpy as np
import pandas as pd
import zarr

from filtershift._version import __version__
from filtershift.errors import IncompleteStoreError, StoreError
from filtershift.ingest import MODEL_SUFFIXES

SCHEMA_VERSION = 1
MANIFEST_KEY = "filtershift"
WEIGHTS = "weights"
FILTER_ID = "filter_id"
TABLES = "tables"
PROGRESS_FILE = ".filtershift-progress.json"
DEFAULT_CHUNK_FILTERS = 1 << 18
CODECS = ("none", "zstd", "lz4")
DEFAULT_CODEC = "none"

#: Label cleaning applied when grouping coordinates are built; raw labels stay in the tables.
DEFAULT_LABEL_RULES: tuple[dict, ...] = (
    {"column": "Task", "contains": "Segmentation", "value": "Segmentation"},
)

RECORD_COLUMNS = {
    "record": "int32",
    "model_id": "int64",
    "conv_depth": "int32",
    "conv_depth_norm": "float32",
    "layer": "str",
    "in_channels": "Int64",
    "out_channels": "Int64",
    "groups": "Int64",
    "start": "int64",
    "stop": "int64",
    "n": "int64",
    "source_start": "int64",
}


@dataclass(frozen=True)
class Location:
    """Where a store lives: a local path or an fsspec URL plus its storage options."""

    url: str
    storage_options: dict

    @classmethod
    def of(cls, path_or_url, storage_options: dict | None = None, *, write: bool = False) -> "Location":
        """Where a store lives, resolved once, where the user typed it.

        A local path (or ``file://`` URL) is made absolute: dask workers run in other working directories, and a
        relative path would name another (or no) store there. ``write``: the store will be written (read-only
        schemes such as https:// are refused). Unknown schemes and paths with a component named after a scheme
        (``s3:``, a URL that lost its '//') are refused."""
        from filtershift.outputs import check

        url = os.fspath(path_or_url) if isinstance(path_or_url, os.PathLike) else str(path_or_url)
        check(url.rstrip("/"), "store", write=write)
        if "://" not in url:
            url = os.path.abspath(url)
        elif url.startswith("file://"):
            url = "file://" + os.path.abspath(url[len("file://"):])
        return cls(url.rstrip("/") or "/", _with_endpoint(url, dict(storage_options or {})))

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str | None:
        """The store's directory on this host, or None for object storage."""
        if not self.is_local:
            return None
        return self.url[len("file://"):] if self.url.startswith("file://") else self.url

    def scrub(self, text: str) -> str:
        """``text`` without this location's credentials (storage option values, user:password@ in URLs)."""
        for secret in _secrets(self.storage_options):
            text = text.replace(secret, "***")
        return re.sub(r"//[^/@\s]*@", "//", text)

    @property
    def display(self) -> str:
        """The URL without credentials, for messages and logs."""
        return re.sub(r"//[^/@]*@", "//", self.url)

    def fs(self):
        fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs, root

    def zarr_store(self, read_only: bool):
        if self.is_local:
            return zarr.storage.LocalStore(self.local_path, read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options,
                                                 read_only=read_only)

    def join(self, *parts: str) -> str:
        return "/".join([self.url, *parts])


def _with_endpoint(url: str, options: dict) -> dict:
    """For s3:// URLs, the endpoint this process resolves from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO,
    Ceph, moto) becomes an explicit storage option, so dask workers started with another environment reach the
    same store, not AWS's bucket of the same name. Credentials stay where they are."""
    if not url.startswith(("s3://", "s3a://")) or "endpoint_url" in options or \
            "endpoint_url" in options.get("client_kwargs", {}):
        return options
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {**options, "endpoint_url": endpoint} if endpoint else options


#: Libraries whose exceptions mean "the object store could not be reached or refused the request".
_REMOTE_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure", "google",
                         "urllib3", "requests", "fsspec")
_SECRET_OPTION = re.compile(r"key|secret|token|password|credential|sas", re.IGNORECASE)


def _secrets(options) -> list[str]:
    """String values of credential-like storage options (``key``, ``secret``, ``token``, ...), nested too."""
    found = []
    for name, value in (options.items() if isinstance(options, dict) else ()):
        if isinstance(value, dict):
            found += _secrets(value)
        elif isinstance(value, str) and len(value) >= 4 and _SECRET_OPTION.search(str(name)):
            found.append(value)
    return found


def _remote_reason(exc: BaseException) -> str:
    """What went wrong with a request to object storage, in words (the exception's class is not for users)."""
    name, text = type(exc).__name__.lower(), str(exc).lower()
    if isinstance(exc, PermissionError) or "accessdenied" in name or "access denied" in text or "forbidden" in text:
        return "access denied"
    if isinstance(exc, TimeoutError) or "timeout" in name or "timed out" in text or "timeout" in text:
        return "the endpoint did not answer in time"
    if "credential" in name or "credentials" in text:
        return "no usable credentials"
    if isinstance(exc, ConnectionError) or "connect" in name or "could not connect" in text:
        return "cannot connect to the endpoint"
    if isinstance(exc, FileNotFoundError) or "nosuch" in name:
        return "not found"
    return "the request failed"


@contextmanager
def remote_errors(loc: Location, action: str = "open", hint: str = ""):
    """Turn a failure to reach object storage (connection refused, timeout, access denied) into a StoreError that
    names the store and the remedy, without credentials; local paths and filtershift's own errors pass through.
    ``hint`` is a sentence added before the generic remedies."""
    try:
        yield
    except StoreError:
        raise
    except Exception as exc:
        root = type(exc).__module__.split(".", 1)[0]
        if loc.is_local or not (isinstance(exc, (OSError, TimeoutError)) or root in _REMOTE_ERROR_MODULES):
            raise
        text = str(exc)
        for secret in _secrets(loc.storage_options):
            text = text.replace(secret, "***")
        text = re.sub(r"//[^/@\s]*@", "//", text)
        raise StoreError(f"{loc.display}: cannot {action} the store: {_remote_reason(exc)} ({text}). "
                         f"{hint + ' ' if hint else ''}Check the URL, "
                         "the endpoint (storage option endpoint_url, or AWS_ENDPOINT_URL), the network and the "
                         "credentials; s3fs storage options config_kwargs={'retries': {'max_attempts': N}, "
                         "'connect_timeout': S} bound the wait.") from None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def new_manifest(chunk_filters: int, codec: str, state: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "state": state,
        "version": 0,
        "n_filters": 0,
        "n_records": 0,
        "n_models": 0,
        "chunk_filters": int(chunk_filters),
        "codec": codec,
        "vocabularies": {},
        "label_rules": [dict(r) for r in DEFAULT_LABEL_RULES],
        "provenance": [],
        "integrity": {"n_filters": 0, "n_nonfinite": 0, "nonfinite_policy": "error", "weights_sum": 0.0,
                      "chunk_sums": []},
        "reordered": False,
        "writer": f"filtershift {__version__}",
    }


def open_group(loc: Location, mode: str = "r") -> zarr.Group:
    """The store's Zarr group; a StoreError saying what is there instead when it is not a store."""
    with remote_errors(loc, "open"):
        try:
            return zarr.open_group(store=loc.zarr_store(read_only=(mode == "r")), mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            pass
        raise StoreError(f"{loc.display}: {_not_a_store(loc)}") from None


#: The HDF5 format signature; it sits at byte 0 or, after a user block, at 512, 1024, 2048, ...
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CREATE = "create one with `filtershift convert SRC.h5 DST.zarr` or `filtershift synth DST.zarr --format zarr`."


def _not_a_store(loc: Location) -> str:
    """What is at ``loc`` instead of a store, and the remedy: a missing bucket or path, an HDF5 source, a model file,
    another file, a directory without a store. If the location cannot be examined either, the reason stays general."""
    try:
        fs, root = loc.fs()
        bucket = root.split("/", 1)[0]
        if not loc.is_local and bucket != root and not fs.exists(bucket):
            return (f"bucket {bucket!r} does not exist (or these credentials cannot see it), so no filtershift "
                    "store here. Check the bucket name and the endpoint (storage option endpoint_url, or "
                    "AWS_ENDPOINT_URL).")
        if not fs.exists(root):
            what = "no such file or directory" if loc.is_local else "nothing at this path"
            return f"{what}, so no filtershift store here. Check the path, or {_CREATE}"
        if fs.isfile(root):
            with fs.open(root, "rb") as f:
                head = f.read(2056)
            if any(head[at:at + 8] == _HDF5_SIGNATURE for at in (0, 512, 1024, 2048)):
                return (f"this is an HDF5 source, not a filtershift store; convert it first with "
                        f"`filtershift convert {loc.display} DB.zarr`.")
            if loc.url.lower().endswith(tuple(MODEL_SUFFIXES)):
                return (f"this is a model file, not a filtershift store; add it to one with `filtershift extract "
                        f"{loc.display} --store DB.zarr`, or place it with `filtershift compare {loc.display} "
                        "--store DB.zarr`.")
            return f"a file, not a filtershift store (a store is a directory with a zarr.json); {_CREATE}"
        if fs.exists(f"{root}/.zgroup"):
            return ("a Zarr v2 group, not a filtershift store (filtershift stores are Zarr v3 groups written by "
                    "`filtershift convert`).")
        if fs.exists(f"{root}/zarr.json"):
            return "its zarr.json describes no Zarr v3 group, so it is not a filtershift store."
        inside = sorted(f"{loc.display}/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in fs.ls(root, detail=False)
                        if fs.exists(f"{p.rstrip('/')}/zarr.json"))[:3]
        if inside:
            return (f"a directory without a zarr.json, not a filtershift store; it holds {', '.join(inside)}: pass "
                    "the store's own path.")
        return f"a directory without a zarr.json, not a filtershift store; {_CREATE}"
    except Exception:  # the location could not be examined either: say what is certain
        return f"no filtershift store here (nothing readable as a Zarr v3 group). Check the path, or {_CREATE}"


def read_manifest(group: zarr.Group, loc: Location, *, require_complete: bool = True) -> dict:
    manifest = group.attrs.asdict().get(MANIFEST_KEY)
    if not isinstance(manifest, dict):
        raise StoreError(f"{loc.display}: a Zarr group without a filtershift manifest; it was not written by "
                         "filtershift. Convert the source again with `filtershift convert`.")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(f"{loc.display}: store schema version {version!r} is newer than this filtershift "
                         f"({__version__}, schema {SCHEMA_VERSION}); upgrade filtershift.")
    if require_complete and manifest.get("state") != "complete":
        raise IncompleteStoreError(
            f"{loc.display}: the store is incomplete (state {manifest.get('state')!r}): a "
            f"{'conversion' if manifest.get('state') == 'converting' else 'write'} was interrupted. Run the same "
            "command again with --resume to finish it (or --overwrite to start again).")
    return manifest


def write_manifest(group: zarr.Group, manifest: dict) -> None:
    """Replace the manifest in one atomic metadata write."""
    group.attrs.update({MANIFEST_KEY: json.loads(json.dumps(manifest))})


def table_path(loc: Location, name: str, version: int) -> str:
    return loc.join(TABLES, f"{name}-v{version}.parquet")


def write_table(loc: Location, name: str, version: int, df: pd.DataFrame) -> None:
    """Write one table as Parquet, to a temporary name first then moved into place."""
    fs, _ = loc.fs()
    final = fsspec.core.url_to_fs(table_path(loc, name, version), **loc.storage_options)[1]
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
    if loc.is_local:
        tmp = final + ".tmp"
        with fs.open(tmp, "wb") as f:
            f.write(buf.getvalue())
        fs.mv(tmp, final)
    else:
        fs.pipe_file(final, buf.getvalue())


def read_table(loc: Location, name: str, version: int) -> pd.DataFrame:
    fs, _ = loc.fs()
    path = fsspec.core.url_to_fs(table_path(loc, name, version), **loc.storage_options)[1]
    try:
        with fs.open(path, "rb") as f:
            return pd.read_parquet(f)
    except FileNotFoundError:
        try:
            found = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(path.rsplit("/", 1)[0] + f"/{name}-v*.parquet"))
        except OSError:
            found = []
        raise StoreError(f"{loc.display}: table {name}-v{version}.parquet of the manifest's version {version} is "
                         f"missing (tables present: {', '.join(found) or 'none'}); the store is damaged. Run "
                         "`filtershift verify` and restore the store from a copy or convert again.") from None


def snake_case(column: str) -> str:
    """Coordinate name of a meta column: 'Visual Category' -> 'visual_category'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", str(column)).strip("_").lower()


#: Meta columns that never become grouping coordinates (free text, URLs, ids, hashes).
NOT_GROUPING = {"filter_ids", "Dataset URL", "weights_sha256", "source", "model_id"}
#: Column aliases: the v0.1 data set calls the visual category 'Datatype'.
COLUMN_ALIASES = {"Datatype": "visual_category"}
RESERVED_COORDS = {"record", "model_id", "conv_depth", "conv_depth_norm", "filter_id", "weights", "k",
                   "filter", "layer"}


def grouping_columns(models: pd.DataFrame) -> dict[str, str]:
    """Coordinate name -> models column for every label-like column of the models table."""
    out: dict[str, str] = {}
    for column in models.columns:
        if column in NOT_GROUPING:
            continue
        series = models[column]
        is_label = (pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series)
                    or isinstance(series.dtype, pd.CategoricalDtype) or column == "op_set")
        if not is_label:
            continue
        name = COLUMN_ALIASES.get(column, snake_case(column))
        if not name or name in RESERVED_COORDS or name in out:
            continue
        out[name] = column
    return out


def apply_label_rules(values: pd.Series, column: str, rules) -> pd.Series:
    """Clean raw labels for grouping: a rule maps every label containing ``contains`` to ``value``;
    a missing label becomes ``"unknown"``."""
    labels = ["unknown" if is_missing(v) else str(v) for v in values.tolist()]
    for rule in rules:
        if rule.get("column") not in (column, COLUMN_ALIASES.get(column, column)):
            continue
        needle, value = str(rule["contains"]), str(rule["value"])
        labels = [value if needle in v else v for v in labels]
    return pd.Series(labels, index=values.index, dtype=object)


def is_missing(value) -> bool:
    """True for None, NaN and pd.NA (a missing meta value)."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def vocabulary_codes(labels: pd.Series) -> tuple[list[str], np.ndarray]:
    vocab = sorted(set(labels))
    index = {v: i for i, v in enumerate(vocab)}
    return vocab, labels.map(index).to_numpy(dtype=np.int32)


def vocabularies(models: pd.DataFrame, rules) -> dict[str, list[str]]:
    return {name: vocabulary_codes(apply_label_rules(models[col], col, rules))[0]
            for name, col in grouping_columns(models).items()}
