"""The scheduler options of the commands that compute, and the scheduler context they select.

Argparse glue only: what the options mean lives in :mod:`filtershift.cluster`, imported when a command runs (it
pulls in dask), so building the parser stays light.
"""

from __future__ import annotations

from filtershift.cli._args import positive_int, size


def add_scheduler_arguments(parser) -> None:
    """Add ``--scheduler``, ``--workers``, ``--memory-limit`` and ``--no-dashboard`` to a sub-command's parser."""
    parser.add_argument("--scheduler", default=None, metavar="SCHEDULER",
                        help="tcp://HOST:PORT, a scheduler file, threads, processes, synchronous or local "
                             "(default: DASK_SCHEDULER_ADDRESS, dask config, else threads; a local cluster with "
                             "--workers or --memory-limit; see `filtershift cluster defaults`)")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="run on a local cluster of N worker processes")
    parser.add_argument("--memory-limit", type=size, default=None, metavar="SIZE",
                        help="run on a local cluster with SIZE of memory per worker, e.g. 4GB (default: the "
                             "sizing rule of `filtershift cluster defaults`)")
    parser.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                        help="do not start or print the dask dashboard")


def default_scheduler(args) -> str:
    """The scheduler when neither ``--scheduler``, the environment nor dask config choose one: threads in this
    process, or a local cluster when ``--workers`` or ``--memory-limit`` size one (:data:`DEFAULT_REASON`)."""
    return "local" if getattr(args, "workers", None) or getattr(args, "memory_limit", None) else "threads"


#: Why the default is threads, for ``filtershift cluster defaults``.
DEFAULT_REASON = ("threads in this process: the kernels release the GIL, so one process uses every core, memory "
                  "stays bounded by the chunks in flight, and no cluster starts (a report on this 2-core machine, "
                  "medians of 2 rounds: 1e6 filters 15 s on threads, 20 s on a local cluster, 23 s on processes; "
                  "1e8 filters 30, 42 and 73 s; BENCHMARKS.md). --workers or "
                  "--memory-limit start a local cluster (separate worker memory limits, a dashboard).")


def context_from_args(args):
    """:func:`filtershift.cluster.scheduler_context` from the options added by :func:`add_scheduler_arguments`."""
    from filtershift.cluster import scheduler_context

    return scheduler_context(getattr(args, "scheduler", None), n_workers=getattr(args, "workers", None),
                             memory_limit=getattr(args, "memory_limit", None),
                             dashboard=getattr(args, "dashboard", True),
                             default=default_scheduler(args))
