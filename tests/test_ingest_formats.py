"""A model format is declared once, in its reader module: one new file reaches read_model and the CLI."""

import os
import subprocess
import sys

import pytest

import filtershift.ingest as ingest
from filtershift.errors import InputError

READER = '''"""A test format: the file's text is the result."""

FORMATS = {".fake": ("fake", "read_fake"),
           ".FAKE2": ("fake", "read_fake")}


def read_fake(path):
    with open(path) as f:
        return ("fake", f.read())
'''


def test_a_new_reader_module_is_a_new_format(tmp_path, monkeypatch):
    """A module with FORMATS in the package's path: read_model, READERS/MODEL_SUFFIXES and compare's check see it."""
    (tmp_path / "fakefmt.py").write_text(READER)
    monkeypatch.setattr(ingest, "__path__", [*ingest.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "filtershift.ingest.fakefmt", raising=False)
    model = tmp_path / "net.fake"
    model.write_text("weights")
    assert ingest.read_model(model) == ("fake", "weights")
    assert ingest.READERS[".fake2"] == ("fake", "filtershift.ingest.fakefmt", "read_fake")
    assert ingest.MODEL_SUFFIXES[".onnx"] == "onnx" and ingest.MODEL_SUFFIXES[".fake"] == "fake"

    from filtershift.cli import build_parser

    args = build_parser().parse_args(["compare", str(model), "--store", "s.zarr"])
    from filtershift.cli.compare import check

    check(args)
    with pytest.raises(InputError, match=r"unknown model format '\.txt'; filtershift reads \[.*'\.fake'"):
        ingest.read_model(tmp_path / "net.txt")


def test_the_declared_formats():
    """The table the readers declare (what the hand-written READERS held)."""
    torch = ("torch", "filtershift.ingest.torch", "read_state_dict")
    want = {".onnx": ("onnx", "filtershift.ingest.onnx", "read_onnx"), ".pt": torch, ".pth": torch, ".bin": torch,
            ".ckpt": torch, ".safetensors": ("safetensors", "filtershift.ingest.torch", "read_safetensors")}
    assert dict(ingest.READERS) == want


def test_listing_the_formats_imports_no_reader():
    code = "import sys, filtershift.ingest as i; i.READERS; print(' '.join(sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    loaded = set(proc.stdout.split())
    assert proc.returncode == 0 and "filtershift.ingest" in loaded, proc.stderr
    assert not sorted(m for m in loaded if m.split(".")[0] in ("numpy", "torch", "onnx", "safetensors", "h5py")
                      or m.startswith("filtershift.ingest."))
