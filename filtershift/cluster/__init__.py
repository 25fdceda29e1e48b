"""Where dask computes: what filtershift adds to ``distributed``, one module per concept.

Every entry point that computes runs inside :func:`scheduler_context` (``context.py``). The scheduler is chosen in
this order (``choice.py``):

1. the explicit ``scheduler`` argument (``--scheduler`` on the command line);
2. the ``DASK_SCHEDULER_ADDRESS`` environment variable;
3. dask config: ``scheduler-address``, then ``scheduler``;
4. a distributed ``Client`` already active in this process;
5. the default: ``"threads"`` for the Python API, ``"local"`` (a machine-sized ``LocalCluster``) for the CLI.

A scheduler is one of ``"tcp://HOST:PORT"`` (or ``tls://``, ``HOST:PORT``), a scheduler file written by
``dask scheduler --scheduler-file``, ``"threads"``, ``"processes"``, ``"synchronous"`` or ``"local"``.

``local.py`` sizes and starts ``"local"`` (see :func:`machine_defaults` for the rule and why it is not
``LocalCluster``'s own default). ``remote.py`` reaches a remote scheduler within ``connect_timeout`` (argument, else
``FILTERSHIFT_CONNECT_TIMEOUT``, else 5 s): an unreachable or silent address raises
:class:`~filtershift.errors.FiltershiftError` instead of hanging; addresses are printed without user info or query
strings (:mod:`filtershift.credentials`), so credentials never reach a log. ``processes.py`` runs a scheduler and
workers as ``dask`` CLI processes (tests, ``filtershift cluster local``). The command-line options live in
:mod:`filtershift.cli._scheduler`; nothing here parses arguments.
"""

from filtershift.cluster.choice import LOCAL_SCHEDULERS, Choice, ClientScheduler, resolve_scheduler
from filtershift.cluster.context import Connection, scheduler_context
from filtershift.cluster.local import (
    MEMORY_FRACTION,
    THREADS_PER_WORKER,
    WORKER_CLOSE_TIMEOUT,
    MachineDefaults,
    close_local_cluster,
    machine_defaults,
)
from filtershift.cluster.processes import LocalProcesses, start_local_processes
from filtershift.cluster.remote import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_WORKER_TIMEOUT,
    connect,
    probe,
    read_scheduler_file,
    redact,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_WORKER_TIMEOUT",
    "LOCAL_SCHEDULERS",
    "MEMORY_FRACTION",
    "THREADS_PER_WORKER",
    "WORKER_CLOSE_TIMEOUT",
    "Choice",
    "ClientScheduler",
    "Connection",
    "LocalProcesses",
    "MachineDefaults",
    "close_local_cluster",
    "connect",
    "machine_defaults",
    "probe",
    "read_scheduler_file",
    "redact",
    "resolve_scheduler",
    "scheduler_context",
    "start_local_processes",
]
