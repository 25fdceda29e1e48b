"""Hand-made CNN-Filter-DB sources for the store tests, written with h5py and pandas directly (independent of
filtershift's own synthetic generator)."""

from __future__ import annotations

import warnings
from collections import namedtuple

import h5py
import numpy as np
import pandas as pd

TASKS = ["Classification", "Semantic Segmentation", "Detection", "Segmentation (instance)"]
CATEGORIES = ["natural", "medical ct", "astronomy"]


def make_meta(n_per_record, *, style="v1.0", shuffle=None, models_per=2, rng=None):
    """Meta table for records of the given sizes, ``models_per`` records per model.

    ``shuffle``: a permutation of the records' filter ranges (records stay in table order but take their ranges
    in that order), to exercise reordering.
    """
    n_per_record = list(n_per_record)
    order = list(range(len(n_per_record))) if shuffle is None else list(shuffle)
    starts = {}
    s = 0
    for i in order:
        starts[i] = s
        s += n_per_record[i]
    rows = []
    for i, n in enumerate(n_per_record):
        model = i // models_per
        depth = i % models_per
        ids = f"{starts[i]}:{starts[i] + n - 1}" if style == "v1.0" else list(range(starts[i], starts[i] + n))
        row = {
            "model_id": model, "conv_depth": depth, "conv_depth_norm": depth / max(models_per - 1, 1),
            "filter_ids": ids, "model": f"m{model}.onnx", "producer": "pytorch", "op_set": 11,
            "Name": f"Net-{model % 3}", "Task": TASKS[model % len(TASKS)],
            "Training-Dataset": ["ImageNet", "COCO", None][model % 3],
            "total_filters": 123 + model, "3x3_filter_share": 0.5 + model / 100,
            "(3, 3) filters": 100 + model, "Conv": 10 + model, "extra column": f"x{model}",
        }
        row["Visual Category" if style == "v1.0" else "Datatype"] = CATEGORIES[model % len(CATEGORIES)]
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model_id", "conv_depth", "conv_depth_norm"])


def reordered_meta(n_per_record, shuffle):
    """v0.1 meta whose records take their filter ranges in ``shuffle`` order and whose first two records swap their
    first filter ids: neither is contiguous, so the store is reordered (it keeps a ``filter_id`` coordinate)."""
    meta = make_meta(n_per_record, style="v0.1", shuffle=shuffle)
    a, b = list(meta["filter_ids"].iloc[0]), list(meta["filter_ids"].iloc[1])
    a[0], b[0] = b[0], a[0]
    col = meta.columns.get_loc("filter_ids")
    meta.iat[0, col] = a
    meta.iat[1, col] = b
    return meta


def write_source(path, weights, meta, *, key="filters", layout="flat", meta_format="table"):
    w = np.asarray(weights)
    with h5py.File(path, "w") as h:
        h.create_dataset(key, data=w.reshape(-1, 3, 3) if layout == "3x3" else w)
    if meta is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta.to_hdf(path, key="meta", format=meta_format)
    return path


def random_weights(n, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 9)) * rng.uniform(0.01, 1, size=(n, 1))).astype(dtype)


#: Chunk length (filters) of :func:`labelled_store`.
LABELLED_CHUNK = 4096
LabelledStore = namedtuple("LabelledStore", "path ds weights per_filter records")


def labelled_store(tmp) -> LabelledStore:
    """A 30,000-filter synthetic store in 8 chunks of :data:`LABELLED_CHUNK`, with what plain zarr and pandas read of
    it: ``weights`` (zarr), ``records`` (the records table) and ``per_filter`` (record, model_id, conv_depth and task
    label of every filter, built with pandas), independent of filtershift's Dataset."""
    import numpy as np
    import pandas as pd
    import zarr

    import filtershift as fs
    from filtershift.store.format import Location, read_table

    h5 = fs.synthesize(tmp / "dataset.h5", n_filters=30_000, n_models=12, seed=3)
    path = fs.convert(h5, str(tmp / "store.zarr"), chunk_filters=LABELLED_CHUNK)
    w = zarr.open_group(path, mode="r")["weights"][:]
    recs = read_table(Location.of(path), "records", 1)
    mods = read_table(Location.of(path), "models", 1).set_index("model_id")
    task = mods["Task"].astype(str).where(~mods["Task"].astype(str).str.contains("Segmentation"), "Segmentation")
    n = recs["n"].to_numpy()
    per_filter = pd.DataFrame({col: np.repeat(recs[col].to_numpy(), n) for col in ("record", "model_id", "conv_depth")})
    per_filter["task"] = task.loc[per_filter["model_id"]].to_numpy()
    assert len(per_filter) == len(w) == 30_000
    return LabelledStore(path, fs.open_store(path), w, per_filter, recs)
