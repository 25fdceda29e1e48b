import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")

from _cluster_fixtures import local_cluster, local_cluster_processes, local_processes  # noqa: E402,F401


def pytest_report_header(config):
    """Say which crash-loop sweep runs (tests/test_crash_loops.py), and how to run the other."""
    if os.environ.get("FILTERSHIFT_CRASH_POINTS", "").strip().lower() == "all":
        return "crash loops: the dense sweep (FILTERSHIFT_CRASH_POINTS=all, >= 20 kills per writer)"
    return ("crash loops: 7-10 kill points per writer, every phase; FILTERSHIFT_CRASH_POINTS=all runs the dense "
            "sweep (>= 20 kills per writer)")
