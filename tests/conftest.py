import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")

from _cluster_fixtures import local_cluster, local_cluster_processes, local_processes  # noqa: F401


def pytest_terminal_summary(terminalreporter):
    """After a run that included tests/test_crash_loops.py, say which sweep ran and how to run the other (printed
    with -q too)."""
    ran = any("test_crash_loops.py" in getattr(r, "nodeid", "") for reports in terminalreporter.stats.values()
              for r in reports)
    if not ran:
        return
    if os.environ.get("FILTERSHIFT_CRASH_POINTS", "").strip().lower() == "all":
        terminalreporter.write_line("crash loops: the dense sweep ran (FILTERSHIFT_CRASH_POINTS=all, >= 20 kills "
                                    "per writer)")
    else:
        terminalreporter.write_line("crash loops: 7-10 kill points per writer, every phase; for the dense sweep "
                                    "(>= 20 kills per writer) run FILTERSHIFT_CRASH_POINTS=all python -m pytest "
                                    "tests/test_crash_loops.py")
