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


def pytest_terminal_summary(terminalreporter):
    """Say at which depth the crash loops and the fault matrix ran, and how to run the other (printed with -q too)."""
    ran = {r.nodeid.split("::")[0].rsplit("/", 1)[-1] for reports in terminalreporter.stats.values() for r in reports
           if hasattr(r, "nodeid")}
    for name, line in _tiers.REDUCED.items():
        if name in ran:
            terminalreporter.write_line(f"{line}: ran at full depth" if _tiers.FULL else
                                        f"{line}; FILTERSHIFT_TESTS=full python -m pytest runs the full depth")
