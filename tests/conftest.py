import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")

import _tiers
import pytest
import sources
from _cluster_fixtures import local_cluster, local_cluster_processes, local_processes  # noqa: F401


@pytest.fixture(scope="session")
def labelled_store(tmp_path_factory):
    """:func:`sources.labelled_store` built once per session."""
    return sources.labelled_store(tmp_path_factory.mktemp("labelled"))


#: The files that take longest (minutes on two cores, measured with --durations), run first: the two test processes
#: (pytest-xdist, whole files each) then finish together instead of one waiting on the last long file.
LONGEST_FIRST = ("test_crash_loops.py", "test_fault_matrix.py", "test_report.py", "test_determinism.py",
                 "test_store.py", "test_outputs.py", "test_scale_out.py", "test_reads.py", "test_fuzz.py",
                 "test_demo.py", "test_memory_limit.py")


def pytest_collection_modifyitems(items):
    """Longest files first (:data:`LONGEST_FIRST`), every other file after them in its usual order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_terminal_summary(terminalreporter):
    """Say at which depth the crash loops and the fault matrix ran, and how to run the other (printed with -q too)."""
    ran = {r.nodeid.split("::")[0].rsplit("/", 1)[-1] for reports in terminalreporter.stats.values() for r in reports
           if hasattr(r, "nodeid")}
    for name, line in _tiers.REDUCED.items():
        if name in ran:
            terminalreporter.write_line(f"{line}: ran at full depth" if _tiers.FULL else
                                        f"{line}; FILTERSHIFT_TESTS=full python -m pytest runs the full depth")
