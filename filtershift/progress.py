"""Progress reporting: a tqdm bar for Python loops and for dask graphs.

Bars go to stderr and disappear when stderr is not a terminal unless ``FILTERSHIFT_PROGRESS=1``; set
``FILTERSHIFT_PROGRESS=0`` to silence them everywhere.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from tqdm.auto import tqdm


def enabled() -> bool:
    flag = os.environ.get("FILTERSHIFT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def bar(total: int | None = None, desc: str = "", unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled when progress is off."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)


@contextmanager
def dask_progress(desc: str = "computing"):
    """Show a bar while dask computes: the distributed progress bar on a cluster, tqdm for local schedulers."""
    if not enabled():
        yield
        return
    try:
        from distributed import get_client

        get_client()
        on_cluster = True
    except (ImportError, ValueError):
        on_cluster = False
    if on_cluster:
        yield  # compute() on a client: distributed.progress is shown by the caller on futures
        return
    from dask.callbacks import Callback

    class _Tqdm(Callback):
        def _start_state(self, dsk, state):
            self._bar = bar(total=sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")),
                            desc=desc, unit="task")

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            self._bar.close()

    with _Tqdm():
        yield
