"""Which scheduler computes: the documented choice order, and the setting that sends every graph to a client.

The order, first match wins: the explicit argument; ``DASK_SCHEDULER_ADDRESS`` as the environment holds it now;
dask config ``scheduler-address``, then ``scheduler``; an active distributed ``Client``; the caller's default.
dask's config reads ``DASK_SCHEDULER_ADDRESS`` too, but only when dask is imported, and then reports it as
``scheduler-address``: the explicit rule sees a variable set later (as ``distributed.Client()`` does not) and names
its source in messages. The scheduler names are dask's own (``dask.base.named_schedulers``) and the address
protocols distributed's registered comm backends.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
from dask.base import named_schedulers

from filtershift import credentials
from filtershift.errors import FiltershiftError

#: Every name dask accepts for a local scheduler (plus ``"threaded"``), mapped to the kind filtershift reports.
_KINDS = {dask.threaded.get: "threads", dask.multiprocessing.get: "processes", dask.local.get_sync: "synchronous"}
LOCAL_SCHEDULERS = {"threaded": "threads", **{name: _KINDS[get] for name, get in named_schedulers.items()}}
_DISTRIBUTED_NAMES = {"distributed", "dask.distributed"}
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):\d+$")


@dataclass(frozen=True)
class Choice:
    """A resolved scheduler: ``kind`` is a local scheduler name, ``"local"``, ``"address"``, ``"file"``,
    ``"client"`` or ``"config"``; ``source`` says which rule picked it."""

    kind: str
    target: object = None
    source: str = "default"


class ClientScheduler:
    """The dask ``scheduler`` setting that runs every graph of this process (any thread) on ``client``.

    Setting the Client itself there breaks local clusters: a nanny starts or restarts its worker with a copy of this
    process's dask config, the Client in it cannot pickle, and after a memory-limit restart the worker never came
    back and the computation hung. This object pickles to ``"dask.distributed"`` (a worker's own client).

    Parameters
    ----------
    client : distributed.Client
        The client that runs the graphs.
    """

    def __init__(self, client):
        self.client = client

    def __call__(self, dsk, keys, **kwargs):
        return self.client.get(dsk, keys, **kwargs)

    def __reduce__(self):
        return str, ("dask.distributed",)


@contextmanager
def using(client):
    """Run every dask computation of this process on ``client`` while the context is open."""
    with client.as_current(), dask.config.set(scheduler=ClientScheduler(client)):
        yield


def _protocols() -> tuple[str, ...]:
    from distributed.comm.registry import backends

    return tuple(f"{name}://" for name in backends)


def _classify(value, source: str) -> Choice:
    if isinstance(value, ClientScheduler):
        return Choice("client", value.client, source)
    if not isinstance(value, str):
        from distributed import Client

        if isinstance(value, Client):
            return Choice("client", value, source)
        raise FiltershiftError(f"scheduler {value!r} (from {source}) is not understood: give an address "
                               "tcp://HOST:PORT, a scheduler file, threads, processes, synchronous or local")
    text = value.strip()
    low = text.lower()
    if low in LOCAL_SCHEDULERS:
        return Choice(LOCAL_SCHEDULERS[low], None, source)
    if low == "local":
        return Choice("local", None, source)
    if low.startswith(_protocols()):
        return Choice("address", text, source)
    if _HOST_PORT.match(text) and not Path(text).exists():
        return Choice("address", f"tcp://{text}", source)
    if "://" in text:
        raise FiltershiftError(f"scheduler address {credentials.url(text, query=True)} (from {source}) has an "
                               "unknown protocol: use one of tcp, tls://HOST:PORT")
    return Choice("file", text, source)


def _active_client():
    try:
        from distributed import default_client
        return default_client()
    except (ImportError, ValueError):
        return None


def resolve_scheduler(scheduler=None, *, default: str = "threads") -> Choice:
    """Pick the scheduler by the documented order; nothing is started or connected.

    Parameters
    ----------
    scheduler : str or distributed.Client, optional
        The explicit choice (``--scheduler``); None or ``""`` lets the environment, dask config or an active
        client decide.
    default : str, default "threads"
        The choice when nothing else makes one.

    Returns
    -------
    Choice
        ``kind``, ``target`` (address, file, client or config scheduler) and ``source`` (the rule that chose).

    Raises
    ------
    filtershift.errors.FiltershiftError
        If the value is not a scheduler (unknown protocol, not a string or client).
    """
    if scheduler is not None and scheduler != "":
        return _classify(scheduler, "argument")
    env = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if env:
        return _classify(env, "DASK_SCHEDULER_ADDRESS")
    address = dask.config.get("scheduler-address", None)
    if address:
        return _classify(address, "dask config scheduler-address")
    configured = dask.config.get("scheduler", None)
    if configured is not None and not (isinstance(configured, str) and configured.lower() in _DISTRIBUTED_NAMES):
        if callable(configured) and not isinstance(configured, ClientScheduler) and not hasattr(configured, "submit"):
            return Choice("config", configured, "dask config scheduler")
        return _classify(configured, "dask config scheduler")
    client = _active_client()
    if client is not None:
        return Choice("client", client, "active client")
    return _classify(default, "default")
