"""The three depths of the suite, chosen with ``FILTERSHIFT_TESTS``.

- ``quick`` (the default, README's test command): every test except those marked ``extended``; every fault class
  and every writer's crash safety is still met once (single-kill tests, the fault matrix on local stores and on S3
  with the threaded scheduler).
- ``extended`` (CI runs it after the quick run, with ``-m extended``): the ``extended`` tests too: the crash loops,
  the fault matrix on S3 x process cluster, the fuzzing run, the compile-history determinism check, the second
  memory-limit and the second worker-kill case, convert/extract and upgrade writing to S3 (a report and a figure
  written to S3, and every S3 read, stay in the quick run). The crash loops and the fault matrix run at reduced depth.
- ``full`` (nightly): everything, the crash loops and the fault matrix at full depth.

pytest's summary says which depth ran and what the others add.
"""

import os

TIERS = ("quick", "extended", "full")
TIER = os.environ.get("FILTERSHIFT_TESTS", "").strip().lower() or "quick"
if TIER not in TIERS:
    raise SystemExit(f"FILTERSHIFT_TESTS={TIER!r}: choose one of {', '.join(TIERS)} (empty means quick)")
FULL = TIER == "full"
EXTENDED = TIER in ("extended", "full")

#: file -> tier -> what that depth runs of it; conftest.py prints the line of each file that ran.
DEPTH = {
    "test_crash_loops.py": {
        "extended": "crash loops: 7-10 kill points per writer covering every phase (full: >= 20 kills)",
        "full": "crash loops: >= 20 kill points per writer"},
    "test_fault_matrix.py": {
        "quick": "fault matrix: one of the five commands per case, rotating; a run over the whole suite leaves out "
                 "S3 x cluster (extended: two commands per case, every command meeting every fault and every "
                 "location x scheduler; full: all five commands)",
        "extended": "fault matrix: every fault x location x scheduler, two of the five commands each, every "
                    "command meeting every fault and every location x scheduler (full: all five commands)",
        "full": "fault matrix: every fault x location x scheduler x command"},
}
