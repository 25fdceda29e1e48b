"""The ONNX reader under mutated input: a short run of benchmarks/fuzz_onnx.py (every outcome a ModelFilters or an
InputError, in a child process with RLIMIT_AS and an alarm per file), and minimal reproducers of the failure
classes the long run found, each built with onnx.helper."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from filtershift.errors import InputError
from filtershift.ingest.model import ModelFilters
from filtershift.ingest.onnx import read_onnx

ROOT = Path(__file__).resolve().parents[1]
N_SHORT = 200


def test_mutated_onnx_models_give_filters_or_a_clear_error(tmp_path):
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from fuzz_onnx import fuzz; "
            f"r = fuzz({N_SHORT:d}, 0, {str(tmp_path)!r}, per_file_s=10); print('OUTCOMES', json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("OUTCOMES", 1)[1])
    outcomes = result["outcomes"]
    assert sum(outcomes.values()) == N_SHORT
    # the mutations exercise both outcomes, and the path-escape checks
    assert outcomes.get("ModelFilters", 0) >= 20
    assert sum(v for k, v in outcomes.items() if k.startswith("InputError")) >= 50
    assert any("outside the model's directory" in k for k in outcomes)
    failures = [f"mutation {f['i']} ({f['kind']}): {f['outcome']}" for f in result["failures"]]
    assert not failures, "\n".join(failures)


def test_unmutated_base_model_reads_every_route(tmp_path):
    """The fuzzer's base model is valid and its five 3x3 convs are all found (so mutations start from a model
    that exercises external data, Constant, Identity, Cast and DequantizeLinear)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fuzz_onnx import base_model

    _, n_filters = base_model(tmp_path / "base")
    m = read_onnx(tmp_path / "base" / "m.onnx")
    assert isinstance(m, ModelFilters)
    assert m.filters().shape == (n_filters, 9)
    assert [layer.name for layer in m.layers] == ["A", "C", "E", "F", "Q"]


# -- minimal reproducers of what the long run found (each should be an InputError) ------------------------------


def _model(nodes, inits, path: Path) -> str:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    path.write_bytes(model.SerializeToString())
    return str(path)


W = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)


def _float_attr(name, value=1.0):
    a = AttributeProto()
    a.name, a.type, a.f = name, AttributeProto.FLOAT, value
    return a


def case_group_not_int(path):
    conv = helper.make_node("Conv", ["X", "w"], ["y"], name="c")
    conv.attribute.append(_float_attr("group"))
    return _model([conv], [numpy_helper.from_array(W, "w")], path)


def case_cast_without_to(path):
    return _model([helper.make_node("Cast", ["w0"], ["w"], name="cast"),
                   helper.make_node("Conv", ["X", "w"], ["y"], name="c")],
                  [numpy_helper.from_array(W, "w0")], path)


def case_cast_to_unknown_type(path):
    return _model([helper.make_node("Cast", ["w0"], ["w"], to=1 << 40, name="cast"),
                   helper.make_node("Conv", ["X", "w"], ["y"], name="c")],
                  [numpy_helper.from_array(W, "w0")], path)


def case_identity_without_input(path):
    return _model([helper.make_node("Identity", [], ["w"], name="id"),
                   helper.make_node("Conv", ["X", "w"], ["y"], name="c")], [], path)


def case_dequantize_one_input(path):
    return _model([helper.make_node("DequantizeLinear", ["q"], ["w"], name="dq"),
                   helper.make_node("Conv", ["X", "w"], ["y"], name="c")],
                  [numpy_helper.from_array(W.astype(np.int8), "q")], path)


def case_dequantize_axis_not_int(path):
    dq = helper.make_node("DequantizeLinear", ["q", "s"], ["w"], name="dq")
    dq.attribute.append(_float_attr("axis", 0.0))
    return _model([dq, helper.make_node("Conv", ["X", "w"], ["y"], name="c")],
                  [numpy_helper.from_array(W.astype(np.int8), "q"),
                   numpy_helper.from_array(np.full(4, 0.1, np.float32), "s")], path)


def case_unknown_data_type(path):
    t = numpy_helper.from_array(W, "w")
    t.data_type = 29  # beyond the DataType enum of onnx 1.17+
    return _model([helper.make_node("Conv", ["X", "w"], ["y"], name="c")], [t], path)


def case_dims_overflow_external(path):
    (path.parent / "w.bin").write_bytes(W.tobytes())
    t = numpy_helper.from_array(W, "w")
    t.ClearField("raw_data")
    del t.dims[:]
    t.dims.extend([1 << 62, 3, 3, 3])  # the product wraps around int64 to a negative number
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "w.bin"
    return _model([helper.make_node("Conv", ["X", "w"], ["y"], name="c")], [t], path)


def case_invalid_utf8_op_type(path):
    _model([helper.make_node("Conv", ["X", "w"], ["a"], name="c"), helper.make_node("Relu", ["a"], ["y"])],
           [numpy_helper.from_array(W, "w")], path)
    path.write_bytes(path.read_bytes().replace(b"Relu", b"Rel\xff"))  # a string field that is not UTF-8
    return str(path)


def case_invalid_utf8_location(path):
    (path.parent / "w.bin").write_bytes(W.tobytes())
    t = numpy_helper.from_array(W, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "w.bin"
    _model([helper.make_node("Conv", ["X", "w"], ["y"], name="c")], [t], path)
    path.write_bytes(path.read_bytes().replace(b"w.bin", b"w.bi\xff"))
    return str(path)


CASES = [case_group_not_int, case_cast_without_to, case_cast_to_unknown_type, case_identity_without_input,
         case_dequantize_one_input, case_dequantize_axis_not_int, case_unknown_data_type,
         case_dims_overflow_external, case_invalid_utf8_op_type, case_invalid_utf8_location]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_model_is_an_input_error(tmp_path, case):
    path = case(tmp_path / "m.onnx")
    onnx.load(path, load_external_data=False)  # protobuf parses it: only the reader's checks can refuse it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            got = read_onnx(path)
        except InputError:
            return
    # a model may be acceptable only if its filters are the stored ones
    assert isinstance(got, ModelFilters)
    np.testing.assert_array_equal(got.filters(), W.reshape(-1, 9))
