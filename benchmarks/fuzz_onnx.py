"""Mutation fuzzing of the ONNX reader: every mutated model must give a ``ModelFilters`` or a clear
``InputError``, never another exception, an interpreter crash, a hang or unbounded memory, and never data read
from outside the model's directory.

    python benchmarks/fuzz_onnx.py --files 2000 [--seed 0] [--per-file-s 10]

The valid base model (built with onnx.helper) has five convolutions whose weights take the routes the reader
knows: an initializer in an external-data file, a Constant node, an Identity, a Cast from float16, and a
DequantizeLinear from int8 (plus a 1x1 conv). Each mutation is one of: bytes of the .onnx flipped, the .onnx
truncated, the external-data file damaged or truncated, or a protobuf field changed through the onnx API (tensor
dims, data_type, raw_data size, external-data location (with '..', absolute, missing, a symlink out), offset and
length, node attributes (group, Cast 'to', axis, block_size), op types, inputs (dangling, cycles), ir_version,
opsets). Mutation ``i`` depends only on ``(seed, i)``.

The loop runs in a child process with a 4 GiB address-space limit (RLIMIT_AS) and an alarm per file; the parent
restarts the child after a crash or a hang (no progress for 3 x the per-file time) and counts it. Unexpected
outcomes are saved under ``--keep DIR`` (default: a temporary directory that is printed) as reproducers. Prints
the outcome counts and appends them to BENCHMARKS.md. The test suite runs a short version
(tests/test_fuzz_onnx.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = "weights.bin"
OUTSIDE = "outside.bin"
#: Outcomes that are not failures: a model, or an InputError (grouped by the start of its message).
OK_PREFIXES = ("ModelFilters", "InputError")


# ------------------------------------------------------------------------------------------------- the base model


def base_model(directory: Path):
    """Write the valid base model ``directory/m.onnx`` (+ ``weights.bin``); returns (model proto as saved,
    expected number of 3x3 filters)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {"A": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
         "B": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
         "C": rng.standard_normal((8, 8, 3, 3)).astype(np.float32),
         "E": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
         "F": rng.standard_normal((4, 8, 3, 3)).astype(np.float16),
         "Q": rng.integers(-128, 127, (4, 4, 3, 3)).astype(np.int8)}
    dims = ["N", "C", "H", "W"]
    nodes = [
        helper.make_node("Constant", [], ["wC"], value=numpy_helper.from_array(w["C"], "wC_value"), name="constC"),
        helper.make_node("Identity", ["wE_raw"], ["wE"], name="idE"),
        helper.make_node("Cast", ["wF_half"], ["wF"], to=TensorProto.FLOAT, name="castF"),
        helper.make_node("DequantizeLinear", ["wQ_q", "wQ_scale", "wQ_zero"], ["wQ"], axis=0, name="dqQ"),
        helper.make_node("Conv", ["X", "wA"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wB"], ["b"], name="B"),
        helper.make_node("Conv", ["r", "wC"], ["c"], name="C", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "c"], ["s"], name="add1"),
        helper.make_node("Conv", ["s", "wE"], ["e"], name="E", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["s", "e"], ["t"], name="add2"),
        helper.make_node("Conv", ["t", "wF"], ["f"], name="F", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["f", "wQ"], ["q"], name="Q", pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(w["A"], "wA"), numpy_helper.from_array(w["B"], "wB"),
             numpy_helper.from_array(w["E"], "wE_raw"), numpy_helper.from_array(w["F"], "wF_half"),
             numpy_helper.from_array(w["Q"], "wQ_q"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, 4).astype(np.float32), "wQ_scale"),
             numpy_helper.from_array(rng.integers(-3, 3, 4).astype(np.int8), "wQ_zero")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, dims)], inits)
    model = helper.make_model(graph, producer_name="filtershift-fuzz", producer_version="1.0",
                              opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(directory / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA, size_threshold=256)
    saved = onnx.load(str(directory / "m.onnx"), load_external_data=False)
    assert any(t.data_location == t.EXTERNAL for t in saved.graph.initializer), "no external tensor"
    n_filters = 8 * 3 + 8 * 8 + 8 * 1 + 4 * 8 + 4 * 4
    return saved, n_filters


# ------------------------------------------------------------------------------------------------------ mutations


def _tensors(model):
    """Every TensorProto of the graph: initializers and Constant values."""
    out = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "value" and a.HasField("t"):
                out.append(a.t)
    return out


def _set_ext(t, key: str, value: str) -> None:
    for e in t.external_data:
        if e.key == key:
            e.value = value
            return
    e = t.external_data.add()
    e.key, e.value = key, value


def _proto_mutation(model, rng, case: Path) -> str:
    """Change one protobuf field in place; returns the mutation's name ("escape:" marks locations that leave the
    model's directory)."""
    from onnx import AttributeProto

    g = model.graph
    tensors = _tensors(model)
    external = [t for t in tensors if t.data_location == t.EXTERNAL]
    t = tensors[int(rng.integers(len(tensors)))]
    node = g.node[int(rng.integers(len(g.node)))]
    kind = str(rng.choice([
        "dims", "dims_huge", "dims_negative", "dims_drop", "data_type", "raw_data_short", "raw_data_long",
        "raw_to_field", "location_dotdot", "location_abs", "location_missing", "location_empty",
        "location_symlink", "offset", "length", "offset_text", "to_inline_empty", "attr_group", "attr_to",
        "attr_axis", "attr_block", "attr_type", "op_type", "input_dangling", "input_cycle", "input_graph",
        "drop_node", "drop_init", "ir_version", "opset", "dup_output",
    ]))
    if kind == "dims":
        if len(t.dims):
            t.dims[int(rng.integers(len(t.dims)))] = int(rng.integers(0, 40))
    elif kind == "dims_huge":
        del t.dims[:]
        t.dims.extend(int(d) for d in rng.choice([1 << 20, 1 << 31, 1 << 40, 3, 9, 1 << 62], size=rng.integers(1, 6)))
    elif kind == "dims_negative":
        if len(t.dims):
            t.dims[int(rng.integers(len(t.dims)))] = -int(rng.integers(1, 5))
    elif kind == "dims_drop":
        if len(t.dims):
            del t.dims[int(rng.integers(len(t.dims)))]
    elif kind == "data_type":
        t.data_type = int(rng.integers(0, 30))
    elif kind == "raw_data_short":
        if t.HasField("raw_data"):
            t.raw_data = t.raw_data[: int(rng.integers(0, max(len(t.raw_data), 1)))]
        else:
            t.raw_data = b"\x00" * int(rng.integers(0, 64))
    elif kind == "raw_data_long":
        t.raw_data = bytes(t.raw_data) + bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8))
    elif kind == "raw_to_field":
        if t.HasField("raw_data") and t.data_location != t.EXTERNAL:
            n = len(t.raw_data) // 4
            t.ClearField("raw_data")
            t.float_data.extend(rng.standard_normal(int(rng.integers(0, n + 3))).tolist())
    elif kind.startswith("location") and external:
        t = external[int(rng.integers(len(external)))]
        if kind == "location_dotdot":
            loc = str(rng.choice([f"../{OUTSIDE}", f"sub/../../{OUTSIDE}", f"..\\{OUTSIDE}",
                                  f"./../{OUTSIDE}", f"{DATA}/../../{OUTSIDE}"]))
            _set_ext(t, "location", loc)
            return "escape:" + kind
        if kind == "location_abs":
            _set_ext(t, "location", str(case.parent / OUTSIDE))
            return "escape:" + kind
        if kind == "location_missing":
            _set_ext(t, "location", "nowhere.bin")
        elif kind == "location_empty":
            _set_ext(t, "location", "")
        elif kind == "location_symlink":
            link = case / "link.bin"
            link.unlink(missing_ok=True)
            os.symlink(case.parent / OUTSIDE, link)
            _set_ext(t, "location", "link.bin")
            return "escape:" + kind
    elif kind in ("offset", "length", "offset_text") and external:
        t = external[int(rng.integers(len(external)))]
        if kind == "offset_text":
            _set_ext(t, str(rng.choice(["offset", "length"])), str(rng.choice(["x", "1e3", "", "-0", " 7"])))
        else:
            _set_ext(t, kind, str(int(rng.choice([-1, 0, 1, 3, 1 << 20, 1 << 40, -(1 << 62), 17]))))
    elif kind == "to_inline_empty" and external:
        t = external[int(rng.integers(len(external)))]
        t.data_location = int(rng.choice([0, 1]))
    elif kind.startswith("attr_"):
        name = {"attr_group": "group", "attr_to": "to", "attr_axis": "axis", "attr_block": "block_size"}.get(kind)
        if kind == "attr_type":
            if node.attribute:
                a = node.attribute[int(rng.integers(len(node.attribute)))]
                a.type = int(rng.choice([AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.INTS, 0]))
        else:
            value = int(rng.choice([0, -1, -7, 1, 2, 3, 8, 1 << 20, 1 << 40, 1 << 62, 16, 25, 99]))
            for a in node.attribute:
                if a.name == name:
                    a.i = value
                    break
            else:
                a = node.attribute.add()
                a.name, a.type, a.i = name, AttributeProto.INT, value
    elif kind == "op_type":
        node.op_type = str(rng.choice(["Conv", "QLinearConv", "ConvInteger", "Identity", "Cast", "Constant",
                                       "DequantizeLinear", "Relu", "Bogus"]))
    elif kind == "input_dangling":
        if node.input:
            node.input[int(rng.integers(len(node.input)))] = "no_such_tensor"
    elif kind == "input_cycle":
        if node.input and node.output:
            node.input[int(rng.integers(len(node.input)))] = node.output[0]
        other = g.node[int(rng.integers(len(g.node)))]
        if other.input and node.output:
            other.input[0] = node.output[0]
            if node.input and other.output:
                node.input[0] = other.output[0]
    elif kind == "input_graph":
        if node.input:
            node.input[int(rng.integers(len(node.input)))] = "X"
    elif kind == "drop_node":
        del g.node[int(rng.integers(len(g.node)))]
    elif kind == "drop_init":
        if len(g.initializer):
            del g.initializer[int(rng.integers(len(g.initializer)))]
    elif kind == "ir_version":
        model.ir_version = int(rng.choice([0, 1, 3, 99, 1 << 40]))
    elif kind == "opset":
        model.opset_import[0].version = int(rng.choice([0, 1, 7, 10, 13, 99, -1]))
        if rng.random() < 0.3:
            model.opset_import[0].domain = "ai.onnx.ml"
    elif kind == "dup_output" and node.output:
        g.node[int(rng.integers(len(g.node)))].output.append(node.output[0])
    return kind


def _flip(data: bytes, rng, max_flips: int = 20) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, max_flips))):
        b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    return bytes(b)


def make_case(i: int, seed: int, base_dir: Path, case: Path) -> str:
    """Write mutated model ``i`` into ``case`` (m.onnx + weights.bin); returns the mutation's name."""
    import onnx

    rng = np.random.default_rng([seed, i])
    if case.exists():
        shutil.rmtree(case)
    case.mkdir()
    model_bytes = (base_dir / "m.onnx").read_bytes()
    data = (base_dir / DATA).read_bytes()
    how = str(rng.choice(["flip", "truncate", "data", "proto", "proto", "proto", "proto+flip"]))
    kind = how
    if how in ("proto", "proto+flip"):
        model = onnx.ModelProto()
        model.ParseFromString(model_bytes)
        names = [_proto_mutation(model, rng, case) for _ in range(int(rng.integers(1, 4)))]
        kind = "proto:" + "+".join(n.replace("escape:", "") for n in names)
        if any(n.startswith("escape:") for n in names):
            kind = "escape|" + kind
        model_bytes = model.SerializeToString()  # never onnx.save: it would write external data files
        if how == "proto+flip":
            model_bytes = _flip(model_bytes, rng, 4)
    elif how == "flip":
        model_bytes = _flip(model_bytes, rng)
    elif how == "truncate":
        model_bytes = model_bytes[: int(rng.integers(0, len(model_bytes)))]
    elif how == "data":
        data = _flip(data, rng) if rng.random() < 0.5 else data[: int(rng.integers(0, len(data)))]
    (case / "m.onnx").write_bytes(model_bytes)
    (case / DATA).write_bytes(data)
    return kind


# ---------------------------------------------------------------------------------------------------- child loop


def child(start: int, stop: int, seed: int, workdir: str, per_file_s: int, log_path: str) -> None:
    """Read mutated models ``start..stop-1``; one JSON line per model in ``log_path`` (a 'begin' line is written
    and flushed first, so a crash is attributed to its model)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    warnings.simplefilter("ignore")
    from filtershift.errors import InputError
    from filtershift.ingest.model import ModelFilters
    from filtershift.ingest.onnx import read_onnx

    work = Path(workdir)
    base_dir = work / "base"
    case = work / "case"
    outside = os.path.realpath(work / OUTSIDE)
    escaped: list[str] = []

    def audit(event, args):  # every file the reader opens: none may be the file outside the model's directory
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                if os.path.realpath(os.fsdecode(args[0])) == outside:
                    escaped.append(os.fsdecode(args[0]))
            except (TypeError, ValueError, OSError):
                pass

    sys.addaudithook(audit)

    def alarm(*_):
        raise TimeoutError(f"no result after {per_file_s} s")

    signal.signal(signal.SIGALRM, alarm)
    with open(log_path, "a", buffering=1) as log:
        for i in range(start, stop):
            kind = make_case(i, seed, base_dir, case)
            log.write(json.dumps({"i": i, "begin": kind}) + "\n")
            log.flush()
            escaped.clear()
            signal.alarm(per_file_s)
            try:
                got = read_onnx(case / "m.onnx")
                if not isinstance(got, ModelFilters):
                    outcome = f"FAIL returned {type(got).__name__}"
                else:
                    got.filters()
                    outcome = "ModelFilters"
            except InputError as exc:
                outcome = "InputError: " + _shape_of(str(exc).split(": ", 1)[-1])
            except BaseException as exc:  # noqa: BLE001 - anything else is the finding
                outcome = f"FAIL {type(exc).__name__}: {str(exc)[:100]}"
            finally:
                signal.alarm(0)
            if escaped:
                outcome = f"FAIL opened {escaped[0]!r}, outside the model's directory ({outcome})"
            log.write(json.dumps({"i": i, "kind": kind, "outcome": outcome}) + "\n")


def _shape_of(message: str) -> str:
    """An error message with its names and numbers blanked, so that outcomes group by kind of error."""
    text = re.sub(r"b?'[^']*'|\[[^\]]*\]|\([^)]*\)|/\S+|-?\d+", "_", message)
    return text.split(";")[0].split(", the")[0][:70]


def _read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def fuzz(n_files: int, seed: int, workdir: str, per_file_s: int = 10, keep: str | None = None) -> dict:
    """Run mutations ``0..n_files-1`` in child processes; returns {"outcomes": counts, "failures": [...],
    "by_mutation": counts of (mutation family, ok/fail)}. Failures are copied to ``keep``."""
    work = Path(workdir)
    base_dir = work / "base"
    base_model(base_dir)
    (work / OUTSIDE).write_bytes((base_dir / DATA).read_bytes())  # a valid-looking file outside every case
    log_path = work / "log.jsonl"
    log_path.unlink(missing_ok=True)
    outcomes: collections.Counter = collections.Counter()
    failures = []
    done: dict[int, dict] = {}
    start = 0
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    while start < n_files:
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from fuzz_onnx import child; "
                f"child({start}, {n_files}, {seed}, {str(work)!r}, {per_file_s}, {str(log_path)!r})")
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        last_len, last_change = -1, time.monotonic()
        hung = False
        while proc.poll() is None:
            time.sleep(0.2)
            size = log_path.stat().st_size if log_path.exists() else 0
            if size != last_len:
                last_len, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > 3 * per_file_s + 30:
                proc.kill()
                hung = True
        _, err = proc.communicate()
        entries = _read_log(log_path)
        for e in entries:
            if "outcome" in e:
                done[e["i"]] = e
        if proc.returncode == 0 and not hung:
            break
        begun = [e for e in entries if "begin" in e and e["i"] not in done]
        if not begun:
            raise RuntimeError(f"fuzz child failed before reading any model:\n{err.decode()[-3000:]}")
        bad = begun[-1]
        why = "hang (killed by the parent)" if hung else f"interpreter died (exit {proc.returncode})"
        done[bad["i"]] = {"i": bad["i"], "kind": bad["begin"], "outcome": f"FAIL {why}",
                          "stderr": err.decode(errors="replace")[-500:]}
        log_path.open("a").write(json.dumps(done[bad["i"]]) + "\n")
        start = bad["i"] + 1
    by_mutation: collections.Counter = collections.Counter()
    for i in sorted(done):
        e = done[i]
        outcomes[e["outcome"]] += 1
        family = e["kind"].replace("escape|", "").split(":")[0]
        ok = e["outcome"].startswith(OK_PREFIXES)
        by_mutation[f"{family} -> {'model' if e['outcome'] == 'ModelFilters' else 'InputError' if ok else 'FAIL'}"] += 1
        if not ok:
            failures.append(e)
    if failures and keep:
        keep_dir = Path(keep)
        keep_dir.mkdir(parents=True, exist_ok=True)
        for e in failures[:50]:
            dest = keep_dir / f"case-{seed}-{e['i']}"
            shutil.rmtree(dest, ignore_errors=True)
            make_case(e["i"], seed, base_dir, dest)
            (dest / "outcome.json").write_text(json.dumps(e, indent=1))
    missing = set(range(n_files)) - set(done)
    if missing:
        raise RuntimeError(f"mutations {sorted(missing)[:10]} have no outcome")
    return {"outcomes": dict(outcomes), "failures": failures, "by_mutation": dict(by_mutation)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-file-s", type=int, default=10)
    ap.add_argument("--keep", default=None, help="directory for reproducers of failures")
    ap.add_argument("--no-append", action="store_true", help="do not append to BENCHMARKS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import append_section

    work = tempfile.mkdtemp(prefix="fs-fuzz-onnx-")
    keep = args.keep or tempfile.mkdtemp(prefix="fs-fuzz-onnx-failures-")
    t0 = time.perf_counter()
    try:
        result = fuzz(args.files, args.seed, work, args.per_file_s, keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    outcomes, failures = result["outcomes"], result["failures"]
    n_ok = sum(v for k, v in outcomes.items() if k.startswith(OK_PREFIXES))
    lines = [f"{args.files} mutated ONNX models (seed {args.seed}, {wall:.0f} s): {n_ok} gave a ModelFilters or "
             f"an InputError, {len(failures)} failed (another exception, a crash, a hang over "
             f"{args.per_file_s} s, an allocation over 4 GiB, or data read from outside the model's directory).",
             "", "| outcome | models |", "|---|---|"]
    lines += [f"| {k.replace('|', '/')} | {v} |" for k, v in sorted(outcomes.items(), key=lambda kv: -kv[1])]
    lines += ["", "| mutation family -> outcome | models |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(result["by_mutation"].items())]
    if failures:
        lines += ["", f"Reproducers of the failures: {keep} (each case-SEED-I/ holds m.onnx, weights.bin and "
                      "outcome.json)."]
    if not args.no_append:
        append_section("Fuzzing the ONNX reader", "\n".join(lines))
    else:
        print("\n".join(lines))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("FILTERSHIFT_PROGRESS", "0")
    main()
