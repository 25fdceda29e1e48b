"""The scheduler options of the commands that compute, and the scheduler context they select.

Argparse glue only: what the options mean lives in :mod:`filtershift.cluster`, imported when a command runs (it
pulls in dask), so building the parser stays light.
"""

from __future__ import annotations

from filtershift.cli._args import positive_int, size


def add_scheduler_arguments(parser, *, default: str = "local") -> None:
    """Add ``--scheduler``, ``--workers``, ``--memory-limit`` and ``--no-dashboard`` to a sub-command's parser."""
    parser.add_argument("--scheduler", default=None, metavar="SCHEDULER",
                        help="tcp://HOST:PORT, a scheduler file, threads, processes, synchronous or local "
                             f"(default: DASK_SCHEDULER_ADDRESS, dask config, else {default})")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="workers of a local cluster (default: one per core)")
    parser.add_argument("--memory-limit", type=size, default=None, metavar="SIZE",
                        help="memory per local worker, e.g. 4GB (default: the sizing rule of `filtershift cluster "
                             "defaults`)")
    parser.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                        help="do not start or print the dask dashboard")
    parser.set_defaults(scheduler_default=default)


def context_from_args(args):
    """:func:`filtershift.cluster.scheduler_context` from the options added by :func:`add_scheduler_arguments`."""
    from filtershift.cluster import scheduler_context

    return scheduler_context(getattr(args, "scheduler", None), n_workers=getattr(args, "workers", None),
                             memory_limit=getattr(args, "memory_limit", None),
                             dashboard=getattr(args, "dashboard", True),
                             default=getattr(args, "scheduler_default", "local"))
