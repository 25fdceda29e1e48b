"""Every task of a pass is named after the pass (issue #14): a dashboard or profile says which pass runs."""

import dask
import numpy as np
import pandas as pd
from dask.callbacks import Callback
from dask.utils import key_split

from filtershift.stats import density2d, distributions, fit_basis, record_stats
from filtershift.stats.quality import orthogonality
from filtershift.store.dataset import from_arrays


def _data():
    rng = np.random.default_rng(3)
    n = [300, 500, 260, 400]
    recs = pd.DataFrame({"model_id": [1, 1, 2, 2], "conv_depth": [0, 1, 0, 1], "conv_depth_norm": [0.0, 1.0] * 2,
                         "n": n, "in_channels": [10, 50, 13, 40], "out_channels": [30, 10, 20, 10]})
    mods = pd.DataFrame({"model_id": [1, 2], "Task": ["a", "b"]})
    w = rng.standard_normal((sum(n), 9)).astype(np.float32)
    return from_arrays(w, recs, mods, chunk_filters=256)


class _Keys(Callback):
    """Key names of every graph computed while active (one list per compute)."""

    def __init__(self):
        super().__init__()
        self.graphs = []

    def _start(self, dsk):
        self.graphs.append({key_split(k) for k in dsk})


def test_each_pass_names_its_tasks():
    ds = _data()
    input_names = {key_split(k) for k in dict(ds["weights"].data.__dask_graph__())}
    input_names |= {key_split(k) for k in dict(ds["record"].data.__dask_graph__())}
    stats = record_stats(ds)
    with dask.config.set(scheduler="sync"), _Keys() as keys:
        basis = fit_basis(stats)
        distributions(stats, basis, by="task")
        density2d(stats, basis, bins=8)
        orthogonality(stats)
    assert stats.passes == 5
    passes = ["moments", "range-sparsity", "histograms", "density2d", "orthogonality"]
    assert len(keys.graphs) == len(passes)
    for name, graph in zip(passes, keys.graphs):
        own = graph - input_names
        assert own, name
        assert own <= {f"{name}-chunk", f"{name}-combine", f"{name}-params"}, (name, own)
        assert f"{name}-chunk" in own and f"{name}-combine" in own
