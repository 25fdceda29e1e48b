"""The two depths of the suite. The default runs every case of the crash loops and the fault matrix, each at fewer
points (kill points, commands per fault) chosen to still reach every phase and every command; ``FILTERSHIFT_TESTS=full``
runs all of them (the nightly depth; pytest's summary says which ran)."""

import os

FULL = os.environ.get("FILTERSHIFT_TESTS", "").strip().lower() == "full"

#: file -> (what the default runs, what the full depth adds); conftest.py prints the line of each file that ran.
REDUCED = {
    "test_crash_loops.py": "crash loops: 7-10 kill points per writer covering every phase (full: >= 20 kills)",
    "test_fault_matrix.py": "fault matrix: every fault x location x scheduler, two of the five commands each, every "
                            "command meeting every fault and every location x scheduler (full: all five commands)",
}
