"""``filtershift cluster {defaults,check,local}``: inspect the default sizing, test a scheduler, run a local cluster."""

from __future__ import annotations

import signal
import sys
import time

from filtershift.cli._args import port, positive_int, positive_seconds, size


def register(sub) -> None:
    p = sub.add_parser("cluster", help="dask cluster: default sizing, connection check, local multi-process cluster")
    cmds = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    cmds.required = True

    d = cmds.add_parser("defaults", help="the default scheduler, and the local cluster --workers/--memory-limit get")
    d.add_argument("--workers", type=positive_int, default=None, metavar="N")
    d.add_argument("--memory-limit", type=size, default=None, metavar="SIZE")
    d.set_defaults(func=run_defaults)

    c = cmds.add_parser("check", help="connect to the chosen scheduler and list its workers")
    c.add_argument("--scheduler", default=None, metavar="SCHEDULER",
                   help="tcp://HOST:PORT or a scheduler file (default: DASK_SCHEDULER_ADDRESS, dask config)")
    c.add_argument("--timeout", type=positive_seconds, default=None, metavar="S", help="connection limit in seconds")
    c.set_defaults(func=run_check)

    loc = cmds.add_parser("local", help="start a scheduler and workers as processes on 127.0.0.1 until Ctrl-C")
    loc.add_argument("--workers", type=positive_int, default=2, metavar="N")
    loc.add_argument("--threads", type=positive_int, default=None, metavar="T", help="threads per worker")
    loc.add_argument("--memory-limit", type=size, default=None, metavar="SIZE",
                     help="per worker (default: the sizing rule)")
    loc.add_argument("--port", type=port, default=8786, help="scheduler port (0: any free port)")
    loc.add_argument("--dir", default=None, metavar="DIR", help="where the scheduler file and logs go")
    loc.set_defaults(func=run_local)


def run_defaults(args) -> int:
    import textwrap

    from filtershift.cli._scheduler import DEFAULT_REASON
    from filtershift.cluster import MEMORY_FRACTION, machine_defaults, resolve_scheduler

    choice = resolve_scheduler(None, default="threads")
    if choice.source == "default":
        print(textwrap.fill(f"default scheduler: {DEFAULT_REASON}", 100, subsequent_indent="  "))
    else:
        print(f"default scheduler: {choice.kind} ({choice.source})")
    print("local cluster (--scheduler local, --workers N or --memory-limit SIZE):")
    d = machine_defaults(args.workers, args.memory_limit)
    print(f"cores            {d.cores}")
    print(f"memory           {d.memory_total / 2**30:.1f} GiB")
    print(f"workers          {d.n_workers}")
    print(f"threads/worker   {d.threads_per_worker}")
    rule = "" if args.memory_limit else f" ({MEMORY_FRACTION:g} x memory / workers)"
    print(f"memory/worker    {d.memory_limit / 2**30:.2f} GiB{rule}")
    return 0


def run_check(args) -> int:
    from filtershift.cluster import redact, resolve_scheduler, scheduler_context
    from filtershift.errors import FiltershiftError

    choice = resolve_scheduler(args.scheduler, default="threads")
    if choice.kind not in ("address", "file"):
        raise FiltershiftError("no scheduler to check: pass --scheduler tcp://HOST:PORT or a scheduler file, "
                               "or set DASK_SCHEDULER_ADDRESS")
    t = time.monotonic()
    with scheduler_context(args.scheduler, connect_timeout=args.timeout, quiet=True) as conn:
        workers = conn.client.scheduler_info(n_workers=-1)["workers"]
        print(f"scheduler  {redact(conn.address)} ({choice.source}), answered in {time.monotonic() - t:.2f} s")
        if conn.dashboard_link:
            print(f"dashboard  {redact(conn.dashboard_link)}")
        print(f"workers    {len(workers)}, threads {sum(w['nthreads'] for w in workers.values())}, "
              f"memory {sum(w.get('memory_limit') or 0 for w in workers.values()) / 2**30:.1f} GiB")
        for addr, w in sorted(workers.items()):
            print(f"  {redact(addr):<28} {w['nthreads']} threads  {(w.get('memory_limit') or 0) / 2**30:.2f} GiB")
    return 0


def run_local(args) -> int:
    from filtershift.cluster import machine_defaults, start_local_processes
    from filtershift.outputs import local_path

    directory = None if args.dir is None else local_path(args.dir, "--dir")
    d = machine_defaults(args.workers, args.memory_limit, args.threads)
    procs = start_local_processes(d.n_workers, port=args.port, nthreads=d.threads_per_worker,
                                  memory_limit=d.memory_limit, directory=directory, dashboard=True)
    try:
        print(f"scheduler       {procs.address}")
        print(f"scheduler file  {procs.scheduler_file}")
        print(f"workers         {d.n_workers} x {d.threads_per_worker} threads, {d.memory_limit / 2**30:.2f} GiB each")
        print(f"use it          filtershift report STORE --scheduler {procs.address}   (Ctrl-C stops the cluster)",
              flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while all(p.poll() is None for p in (procs.scheduler, *procs.workers)):
            time.sleep(0.5)
        print("a cluster process exited; stopping the rest", file=sys.stderr)
        return 1
    finally:
        procs.stop()
