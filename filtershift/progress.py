"""Progress reporting: a tqdm bar for Python loops and for dask graphs, on any scheduler.

Bars go to stderr and disappear when stderr is not a terminal unless ``FILTERSHIFT_PROGRESS=1``; set
``FILTERSHIFT_PROGRESS=0`` to silence them everywhere. A graph computed on the local schedulers gets a dask callback;
one computed on a distributed client is submitted as futures and followed by the scheduler's progress feed (the
tasks of the whole graph, not only its outputs), drawn with the same tqdm bar.
"""

from __future__ import annotations

import os
import sys
import time
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


def _current_client():
    """The distributed client dask computes on in this thread, or None. distributed is never imported here: when
    it is not imported yet, no client can exist."""
    if "distributed" not in sys.modules:
        return None
    import dask

    configured = dask.config.get("scheduler", None)
    client = getattr(configured, "client", None)
    if client is not None:
        return client
    if isinstance(configured, str) and configured.lower() not in ("dask.distributed", "distributed"):
        return None  # a local scheduler chosen explicitly
    if callable(configured) and not hasattr(configured, "submit"):
        return None
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


class _FuturesProgress:
    """A dask ``scheduler`` setting that runs a graph on ``client`` as futures and draws the scheduler's progress
    feed of them with a tqdm bar until they finish or fail; then gathers the results (or raises the task's error).

    Like :class:`filtershift.cluster.ClientScheduler` it pickles to ``"dask.distributed"``: a nanny copies this
    process's dask config to the workers it (re)starts."""

    def __init__(self, client, desc: str):
        self.client, self.desc = client, desc

    def __call__(self, dsk, keys, **kwargs):
        from distributed import futures_of

        futures = self.client.get(dsk, keys, sync=False, **kwargs)
        try:
            _tqdm_feed(futures_of(futures), self.client, self.desc)
            return self.client.gather(futures)
        finally:
            del futures

    def __reduce__(self):
        return str, ("dask.distributed",)


#: Seconds between the scheduler's progress messages. The scheduler's feed ends when its next write finds the bar's
#: connection closed; a scheduler that closes before then logs the cancelled feed as an error, so the bar waits two
#: intervals after the last message (a cluster closed right after a computation would otherwise print a traceback).
FEED_INTERVAL = 0.05


def _tqdm_feed(futures, client, desc: str) -> None:
    """Block until ``futures`` (and every task they depend on) finished or one failed, drawing a bar."""
    from distributed.diagnostics.progressbar import ProgressBar

    class _Bar(ProgressBar):
        def __init__(self):
            super().__init__(futures, client.scheduler.address, interval=FEED_INTERVAL, complete=True)
            self.bar = bar(desc=desc, unit="task")

        def _draw_bar(self, remaining=0, all=0, **kwargs):
            self.bar.total = all
            self.bar.n = all - remaining
            self.bar.refresh()

        def _draw_stop(self, **kwargs):
            self.bar.close()

    progress = _Bar()
    try:
        client.sync(progress.listen)
        time.sleep(2 * FEED_INTERVAL)
    finally:
        progress.bar.close()


@contextmanager
def dask_progress(desc: str = "computing"):
    """Show a bar while dask computes: a dask callback on the local schedulers, the scheduler's progress feed on a
    distributed client."""
    if not enabled():
        yield
        return
    client = _current_client()
    if client is not None:
        import dask

        with dask.config.set(scheduler=_FuturesProgress(client, desc)):
            yield
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
