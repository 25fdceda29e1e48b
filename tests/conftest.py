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


def pytest_collection_modifyitems(config, items):
    """Longest files first (:data:`LONGEST_FIRST`), every other file after them in its usual order; at the quick
    depth (tests/_tiers.py) the ``extended`` tests are left out of a run over the whole suite (a run naming files or
    tests runs what it names)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if _tiers.EXTENDED or config.args_source != pytest.Config.ArgsSource.TESTPATHS:
        return
    left_out = [item for item in items if item.get_closest_marker("extended")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("extended")]


def pytest_terminal_summary(terminalreporter, config):
    """Say which depth ran and how to run the others (printed with -q too)."""
    ran = {r.nodeid.split("::")[0].rsplit("/", 1)[-1] for key in ("passed", "failed", "error", "skipped")
           for r in terminalreporter.stats.get(key, ()) if hasattr(r, "nodeid")}
    if not _tiers.EXTENDED and config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        terminalreporter.write_line("quick depth: the tests marked `extended` (crash loops, fuzzing, the S3 x cluster "
                                    "fault cases, ...) were left out; FILTERSHIFT_TESTS=extended python -m pytest -q "
                                    "-m extended runs them (CI does)")
    for name, lines in _tiers.DEPTH.items():
        if name in ran and _tiers.TIER in lines:
            terminalreporter.write_line(lines[_tiers.TIER] if _tiers.FULL else
                                        f"{lines[_tiers.TIER]}; FILTERSHIFT_TESTS=full runs the full depth")
