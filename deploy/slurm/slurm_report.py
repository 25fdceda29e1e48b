"""Run `filtershift report` on a dask cluster of SLURM jobs (dask-jobqueue), then release the jobs.

Run it where jobs can be submitted (a login node, or inside the small allocation of report.sbatch):

    pip install "filtershift[s3]" "dask-jobqueue>=0.9"
    python deploy/slurm/slurm_report.py /shared/db.zarr --out /shared/reports --jobs 4 --account proj --queue cpu

Each SLURM job runs ``--processes`` worker processes of ``--cores / --processes`` threads; dask-jobqueue gives
each worker ``--memory / --processes`` as its memory limit, and the same ``--memory`` is requested from SLURM
(``--mem``), so the worker limits add up to the allocation. The store and the report directory must be on a
file system that every node sees (or in object storage).
"""

import argparse
import subprocess
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="store path or URL, visible from every node")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--jobs", type=int, default=4, help="SLURM jobs of workers")
    p.add_argument("--cores", type=int, default=8, help="cores per job")
    p.add_argument("--processes", type=int, default=4, help="worker processes per job")
    p.add_argument("--memory", default="32GiB", help="memory per job, shared by its workers")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--queue", default=None, help="SLURM partition")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--interface", default=None, help="network interface the workers reach the scheduler on, e.g. ib0")
    p.add_argument("--local-directory", default="$TMPDIR", help="node-local scratch for spilling")
    p.add_argument("--log-directory", default="dask-logs")
    p.add_argument("--worker-timeout", type=float, default=1800, help="seconds to wait for the first worker")
    return p.parse_args(argv)


def make_cluster(args):
    """The SLURMCluster described by ``args`` (no job submitted yet)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(queue=args.queue, account=args.account, cores=args.cores, processes=args.processes,
                        memory=args.memory, walltime=args.walltime, interface=args.interface,
                        local_directory=args.local_directory, log_directory=args.log_directory,
                        job_name="filtershift-worker", worker_extra_args=["--death-timeout", "300"])


def main(argv=None) -> int:
    from distributed import Client

    args = parse_args(argv)
    with make_cluster(args) as cluster, Client(cluster) as client:
        print(cluster.job_script(), file=sys.stderr)
        cluster.scale(jobs=args.jobs)
        client.wait_for_workers(1, timeout=args.worker_timeout)
        cmd = ["filtershift", "report", args.store, "--out", args.out, "--scheduler", cluster.scheduler_address]
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
