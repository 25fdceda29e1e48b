"""Short fuzzing runs of the untrusted-input readers (the long runs live in benchmarks/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.extended
def test_mutated_h5_sources_give_a_store_or_a_clear_error(tmp_path):
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from fuzz_h5 import fuzz; "
            f"print('OUTCOMES', json.dumps(fuzz(25, 7, 'table', {str(tmp_path)!r}, per_file_s=60)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = json.loads(proc.stdout.split("OUTCOMES", 1)[1])
    assert sum(outcomes.values()) == 25
    assert any(k.startswith("InputError") for k in outcomes)
