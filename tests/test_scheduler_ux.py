"""What a user sees of the scheduler around a computation (issue #14): a clean exit of the default local cluster,
and a progress bar on a distributed client with unchanged results."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from filtershift.cluster import scheduler_context
from filtershift.stats import fit_basis
from filtershift.store.convert import convert
from filtershift.store.dataset import open_store
from filtershift.synth import synthesize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Makes every dask worker process of a LocalCluster take 4.5 s to exit (as its interpreter teardown does on a
#: loaded machine); distributed's own LocalCluster.close() kills a worker after 4 s.
SLOW_EXIT = '''
import atexit, multiprocessing, time

def _slow_worker_exit():
    if multiprocessing.current_process().name.startswith("Dask Worker process"):
        time.sleep(4.5)

atexit.register(_slow_worker_exit)
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A small store of four chunks."""
    root = tmp_path_factory.mktemp("ux")
    convert(synthesize(root / "src.h5", n_filters=8000, n_models=4, seed=4), root / "db.zarr", chunk_filters=2048)
    return root / "db.zarr"


def test_default_local_cluster_exits_without_killing_workers(store, tmp_path):
    """``filtershift pca --workers 2`` (a LocalCluster of worker processes) waits for its workers
    to exit: no "Worker process still alive after 4.0 seconds, killing" on stderr, exit 0, the threaded numbers."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_EXIT)
    env = {**os.environ, "FILTERSHIFT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT, os.environ.get("PYTHONPATH", "")])}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "filtershift.cli", "pca", str(store), "--json", "--workers", "2",
                           "--no-dashboard"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "local cluster: 2 workers" in proc.stderr
    assert "still alive" not in proc.stderr and "killing" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    import json

    with scheduler_context("threads"):
        ref = fit_basis(open_store(store))
    assert json.loads(proc.stdout)["components"] == ref.components_.tolist()


def test_progress_bar_on_a_distributed_client(store, local_cluster, monkeypatch, capfd):
    """With FILTERSHIFT_PROGRESS=1 a computation on a distributed client draws a tqdm bar on stderr (the tasks of
    the whole graph), and the results are the bits of the threaded run without a bar."""
    monkeypatch.setenv("FILTERSHIFT_PROGRESS", "0")
    with scheduler_context("threads"):
        ref = fit_basis(open_store(store))
    capfd.readouterr()
    monkeypatch.setenv("FILTERSHIFT_PROGRESS", "1")
    with scheduler_context(local_cluster, dashboard=False, quiet=True):
        basis = fit_basis(open_store(store))
    out, err = capfd.readouterr()
    assert out == ""
    frames = [f for f in err.replace("\r", "\n").splitlines() if "moments" in f]
    assert frames, err
    # the bar counts every task of the graph (four chunks' reads and kernels, the combine) and ends full
    done, total = map(int, re.search(r"\| *(\d+)/(\d+) ", frames[-1]).groups())
    assert done == total >= 9 and "100%" in frames[-1], frames
    np.testing.assert_array_equal(basis.components_, ref.components_)
    np.testing.assert_array_equal(basis.mean_, ref.mean_)
    np.testing.assert_array_equal(basis.explained_variance_, ref.explained_variance_)
