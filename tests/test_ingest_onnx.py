"""ONNX reader: small graphs built with onnx.helper (expected depths worked out by hand), bad and unsafe files,
and one real trained model (nudenet's YOLOv8n) checked against an independent onnx + numpy reading."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
import zipfile
from collections import defaultdict
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from filtershift.errors import InputError
from filtershift.ingest.onnx import read_onnx

RNG = np.random.default_rng(7)
NUDENET = "nudenet==3.4.2"
MODEL_CACHE = Path.home() / ".cache" / "filtershift" / "test-models"
DIMS = ["N", "C", "H", "W"]


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def init(name, array):
    return numpy_helper.from_array(array, name)


def make_model(nodes, initializers=(), inputs=("X",), opset=17, check=True):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, DIMS) for i in inputs],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, DIMS)], list(initializers))
    model = helper.make_model(graph, producer_name="filtershift-test", producer_version="1.0",
                              opset_imports=[helper.make_opsetid("", opset)])
    if check:
        onnx.checker.check_model(model)
    return model


def save(model, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def rows(w):
    """The filters of an (out, in/groups, kh, kw) weight, computed independently: filter o*(in/groups)+i."""
    out, in_g = w.shape[:2]
    return np.array([w[o, i].ravel() for o in range(out) for i in range(in_g)], dtype=np.float32)


def layer(m, name):
    return next(lay for lay in m.layers if lay.name == name)


# ---------------------------------------------------------------------------------------------------- topology


@pytest.fixture(scope="module")
def branchy(tmp_path_factory):
    """X -> A(3x3) -> relu -> {B(1x1), C(3x3, weight in a Constant node)} -> add -> {D(5x5),
    E(3x3 depthwise, weight behind Identity)} ; add(s, e) (residual) -> F(3x3, fp16 weight behind Cast)."""
    w = {"A": rand(4, 3, 3, 3), "B": rand(4, 4, 1, 1), "C": rand(4, 4, 3, 3), "D": rand(2, 4, 5, 5),
         "E": rand(4, 1, 3, 3), "F": rand(2, 4, 3, 3).astype(np.float16)}
    nodes = [
        helper.make_node("Constant", [], ["wC"], value=init("wC_value", w["C"]), name="constC"),
        helper.make_node("Identity", ["wE_raw"], ["wE"], name="idE"),
        helper.make_node("Cast", ["wF_half"], ["wF"], to=TensorProto.FLOAT, name="castF"),
        helper.make_node("Conv", ["X", "wA"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wB"], ["b"], name="B"),
        helper.make_node("Conv", ["r", "wC"], ["c"], name="C", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "c"], ["s"], name="add1"),
        helper.make_node("Conv", ["s", "wD"], ["d"], name="D", pads=[2, 2, 2, 2]),
        helper.make_node("Conv", ["s", "wE"], ["e"], name="E", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["s", "e"], ["t"], name="add2"),
        helper.make_node("Conv", ["t", "wF"], ["f"], name="F", pads=[1, 1, 1, 1]),
    ]
    inits = [init("wA", w["A"]), init("wB", w["B"]), init("wD", w["D"]), init("wE_raw", w["E"]),
             init("wF_half", w["F"])]
    path = save(make_model(nodes, inits), tmp_path_factory.mktemp("branchy") / "branchy.onnx")
    return path, w


def test_depths_branches_and_residual_join(branchy):
    path, w = branchy
    m = read_onnx(path)
    # graph depths by hand: A 0, relu 1, B 2, C 2, add1 3, D 4, E 4, add2 5 (max of add1+1 and E+1), F 6;
    # depths holding a Conv: {0, 2, 4, 6} -> ranks A 0, C 1, E 2, F 3 (B and D share ranks but are not 3x3)
    assert [lay.name for lay in m.layers] == ["A", "C", "E", "F"]
    assert [lay.conv_depth for lay in m.layers] == [0, 1, 2, 3]
    assert [lay.conv_depth_norm for lay in m.layers] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert m.meta["depth"] == 7
    assert (m.meta["Conv"], m.meta["Relu"], m.meta["Add"]) == (6, 1, 2)
    assert not {"Constant", "Identity", "Cast"} & set(m.meta)
    assert (m.meta["producer"], m.meta["op_set"]) == ("filtershift-test 1.0", 17)


def test_weights_channels_groups_and_counts(branchy):
    path, w = branchy
    m = read_onnx(path)
    for name in "ACEF":
        np.testing.assert_array_equal(layer(m, name).weights, rows(w[name].astype(np.float32)))
    shapes = {lay.name: (lay.in_channels, lay.out_channels, lay.groups, lay.kernel) for lay in m.layers}
    assert shapes == {"A": (3, 4, 1, (3, 3)), "C": (4, 4, 1, (3, 3)), "E": (4, 4, 4, (3, 3)),
                      "F": (4, 2, 1, (3, 3))}
    assert layer(m, "E").weights.shape == (4, 9)
    assert m.meta["(3, 3) filters"] == 12 + 16 + 4 + 8
    assert (m.meta["(1, 1) filters"], m.meta["(5, 5) filters"]) == (16, 8)
    assert m.meta["total_filters"] == 64
    assert m.meta["3x3_filter_share"] == pytest.approx(40 / 64)
    f = m.filters()
    assert f.dtype == np.float32 and f.shape == (40, 9)
    expected = np.concatenate([rows(w[n].astype(np.float32)) for n in "ACEF"])
    np.testing.assert_array_equal(f, expected)
    assert m.sha256 == hashlib.sha256(expected.astype("<f4").tobytes()).hexdigest()
    assert m.kind == "onnx" and m.source == path


def longest_paths_by_recursion(edges, n):
    """Independent reference: depth(v) = 0 without predecessors, else 1 + max depth of predecessors."""
    preds = defaultdict(list)
    for u, v in edges:
        preds[v].append(u)
    memo = {}

    def depth(v):
        if v not in memo:
            memo[v] = 1 + max(depth(u) for u in preds[v]) if preds[v] else 0
        return memo[v]

    return [depth(v) for v in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_depths_of_random_dags_match_a_recursive_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 30
    edges, nodes, weights = [], [], {}
    for v in range(n):
        k = int(rng.integers(0, min(v, 3) + 1))
        srcs = sorted(set(rng.choice(v, size=k, replace=False).tolist())) if v and k else []
        edges += [(u, v) for u in srcs]
        ins = [f"t{u}" for u in srcs] or ["X"]
        if rng.random() < 0.5:
            x = ins[0] if len(ins) == 1 else f"sum{v}"
            if len(ins) > 1:
                nodes.append(helper.make_node("Sum", ins, [x], name=f"sum{v}"))
            weights[v] = rand(2, 2, 3, 3)
            nodes.append(helper.make_node("Conv", [x, f"w{v}"], [f"t{v}"], name=f"n{v}", pads=[1, 1, 1, 1]))
        else:
            nodes.append(helper.make_node("Sum", ins, [f"t{v}"], name=f"n{v}"))
    # a Sum that merges inputs of a Conv is its own node one level before the Conv: count it in the reference
    ref_edges, ref_names = [], []
    for v in range(n):
        srcs = [u for u, w_ in edges if w_ == v]
        ref_names.append(f"n{v}")
        if v in weights and len(srcs) > 1:
            ref_names.append(f"sum{v}")
    index = {name: i for i, name in enumerate(ref_names)}
    for v in range(n):
        srcs = [u for u, w_ in edges if w_ == v]
        if v in weights and len(srcs) > 1:
            ref_edges += [(index[f"n{u}"], index[f"sum{v}"]) for u in srcs] + [(index[f"sum{v}"], index[f"n{v}"])]
        else:
            ref_edges += [(index[f"n{u}"], index[f"n{v}"]) for u in srcs]
    depth = longest_paths_by_recursion(ref_edges, len(ref_names))
    nodes.append(helper.make_node("Sum", [f"t{v}" for v in range(n)], ["out"], name="out"))
    path = save(make_model(nodes, [init(f"w{v}", weights[v]) for v in weights]), tmp_path / "dag.onnx")
    m = read_onnx(path)
    conv_depths = sorted({depth[index[f"n{v}"]] for v in weights})
    expected = sorted((conv_depths.index(depth[index[f"n{v}"]]), v) for v in weights)
    assert [(lay.conv_depth, lay.name) for lay in m.layers] == [(r, f"n{v}") for r, v in expected]
    assert m.meta["depth"] == max(depth) + 2


def test_deep_graph_needs_no_recursion(tmp_path):
    n = 5000
    w1, w2 = rand(2, 1, 3, 3), rand(2, 2, 3, 3)
    nodes = [helper.make_node("Conv", ["X", "w1"], ["r0"], name="first")]
    nodes += [helper.make_node("Relu", [f"r{k}"], [f"r{k + 1}"], name=f"relu{k}") for k in range(n)]
    nodes += [helper.make_node("Conv", [f"r{n}", "w2"], ["out"], name="last")]
    m = read_onnx(save(make_model(nodes, [init("w1", w1), init("w2", w2)]), tmp_path / "deep.onnx"))
    assert [(lay.name, lay.conv_depth) for lay in m.layers] == [("first", 0), ("last", 1)]
    assert (m.meta["depth"], m.meta["Relu"]) == (n + 2, n)


# ---------------------------------------------------------------------------------------------- weight routes


def per_channel(w, scale, zero):
    return ((w.astype(np.float32) - zero.astype(np.float32)[:, None, None, None])
            * scale.astype(np.float32)[:, None, None, None])


def test_dequantize_linear_and_cast_chains(tmp_path):
    q = RNG.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    scale = np.array([0.5, 0.25, 0.125], np.float32)
    zero = np.array([1, -2, 3], np.int8)
    bf = rand(2, 3, 3, 3).astype(ml_dtypes.bfloat16)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=0, name="dq"),
        helper.make_node("Identity", ["dq"], ["wQ"], name="idQ"),
        helper.make_node("Cast", ["wbf"], ["wbf32"], to=TensorProto.FLOAT, name="castbf"),
        helper.make_node("Identity", ["wbf32"], ["wB"], name="idB"),
        helper.make_node("Conv", ["X", "wQ"], ["y"], name="Q", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y", "wB"], ["out"], name="BF", pads=[1, 1, 1, 1]),
    ]
    inits = [init("q", q), init("s", scale), init("z", zero), init("wbf", bf)]
    m = read_onnx(save(make_model(nodes, inits), tmp_path / "dq.onnx"))
    np.testing.assert_array_equal(layer(m, "Q").weights, rows(per_channel(q, scale, zero)))
    np.testing.assert_array_equal(layer(m, "BF").weights, rows(bf.astype(np.float32)))
    assert [lay.conv_depth for lay in m.layers] == [0, 1]


def test_per_tensor_dequantize_linear_default_axis(tmp_path):
    q = RNG.integers(0, 256, (2, 2, 3, 3)).astype(np.uint8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], name="dq"),
             helper.make_node("Conv", ["X", "w"], ["out"], name="C")]
    inits = [init("q", q), init("s", np.array(0.1, np.float32)), init("z", np.array(128, np.uint8))]
    m = read_onnx(save(make_model(nodes, inits), tmp_path / "dq1.onnx"))
    np.testing.assert_allclose(m.filters(), rows((q.astype(np.float32) - 128) * np.float32(0.1)), rtol=1e-6)


def test_qlinearconv_per_channel(tmp_path):
    wq = RNG.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    ws = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    wz = np.array([120, 128, 130, 7], np.uint8)
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"], name="QL"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"], name="dqy"),
    ]
    inits = [init("xs", np.array(0.05, np.float32)), init("xz", np.array(128, np.uint8)), init("wq", wq),
             init("ws", ws), init("wz", wz), init("ys", np.array(0.1, np.float32)),
             init("yz", np.array(128, np.uint8))]
    m = read_onnx(save(make_model(nodes, inits), tmp_path / "qlinear.onnx"))
    np.testing.assert_allclose(m.filters(), rows(per_channel(wq, ws, wz)), rtol=1e-6)
    assert (m.layers[0].name, m.layers[0].in_channels, m.layers[0].out_channels) == ("QL", 3, 4)
    assert m.meta["QLinearConv"] == 1 and m.meta["(3, 3) filters"] == 12


def conv_integer_nodes(with_scale_pattern: bool):
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["X"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("ConvInteger", ["xq", "wq", "xz", "wz"], ["yi"], name="CI"),
        helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT, name="cast"),
    ]
    if with_scale_pattern:
        nodes += [helper.make_node("Mul", ["xs", "ws"], ["scales"], name="scales"),
                  helper.make_node("Mul", ["yf", "scales"], ["out"], name="rescale")]
    else:
        nodes += [helper.make_node("Relu", ["yf"], ["out"], name="relu")]
    return nodes


def test_conv_integer_per_channel_zero_points_and_scale(tmp_path):
    wq = RNG.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    wz = np.array([0, -5, 9], np.int8)
    ws = np.array(0.02, np.float32)
    inits = [init("wq", wq), init("wz", wz), init("ws", ws)]
    m = read_onnx(save(make_model(conv_integer_nodes(True), inits), tmp_path / "ci.onnx"))
    expected = (wq.astype(np.float32) - wz.astype(np.float32)[:, None, None, None]) * ws
    np.testing.assert_allclose(m.filters(), rows(expected), rtol=1e-6)
    assert m.meta["ConvInteger"] == 1


def test_conv_integer_without_scale_keeps_integers_and_warns(tmp_path):
    wq = RNG.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    wz = np.array([0, -5, 9], np.int8)
    path = save(make_model(conv_integer_nodes(False), [init("wq", wq), init("wz", wz)]), tmp_path / "ci0.onnx")
    with pytest.warns(UserWarning, match="no weight scale"):
        m = read_onnx(path)
    np.testing.assert_array_equal(m.filters(), rows(wq.astype(np.float32) - wz.astype(np.float32)[:, None, None,
                                                                                                    None]))


def test_weight_as_graph_input_is_skipped_with_warning(tmp_path):
    w = rand(2, 2, 3, 3)
    nodes = [helper.make_node("Conv", ["X", "wIn"], ["a"], name="fromInput"),
             helper.make_node("Conv", ["a", "w"], ["out"], name="stored")]
    path = save(make_model(nodes, [init("w", w)], inputs=("X", "wIn")), tmp_path / "inw.onnx")
    with pytest.warns(UserWarning, match="graph input"):
        m = read_onnx(path)
    # the skipped conv has no weight to rank: the stored one is the only, first conv depth
    assert [(lay.name, lay.conv_depth) for lay in m.layers] == [("stored", 0)]
    np.testing.assert_array_equal(m.filters(), rows(w))


def test_initializers_listed_as_graph_inputs(tmp_path):
    """Old exporters (IR < 4) list every initializer among the graph inputs too: those are not data inputs."""
    w1, w2 = rand(2, 1, 3, 3), rand(2, 2, 3, 3)
    nodes = [helper.make_node("Conv", ["X", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w2"], ["out"], name="c2")]
    model = make_model(nodes, [init("w1", w1), init("w2", w2)], inputs=("X", "w1", "w2"), check=False)
    m = read_onnx(save(model, tmp_path / "old.onnx"))
    assert [(lay.name, lay.conv_depth) for lay in m.layers] == [("c1", 0), ("c2", 1)]


# ------------------------------------------------------------------------------------------------ external data


def external_model(tmp_path, location="weights.bin"):
    w1, w2 = rand(4, 2, 3, 3), rand(3, 4, 3, 3)
    nodes = [helper.make_node("Conv", ["X", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "w2"], ["out"], name="c2")]
    model = make_model(nodes, [init("w1", w1), init("w2", w2)])
    d = tmp_path / "model"
    d.mkdir()
    onnx.save_model(model, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return d / "m.onnx", np.concatenate([rows(w1), rows(w2)])


def rewrite_location(path, location, length=None):
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            if e.key == "length" and length is not None:
                e.value = str(length)
    Path(path).write_bytes(model.SerializeToString())


def test_external_data_is_read(tmp_path):
    path, expected = external_model(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    np.testing.assert_array_equal(read_onnx(path).filters(), expected)


@pytest.mark.parametrize("location", ["../weights.bin", "sub/../../weights.bin", "/etc/passwd"])
def test_external_data_escaping_the_directory_is_refused(tmp_path, location):
    path, _ = external_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes((path.parent / "weights.bin").read_bytes())
    rewrite_location(path, location)
    with pytest.raises(InputError, match="path traversal") as e:
        read_onnx(path)
    assert str(path) in str(e.value)


def test_external_data_symlink_out_is_refused(tmp_path):
    path, _ = external_model(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())
    os.symlink(outside, path.parent / "link.bin")
    rewrite_location(path, "link.bin")
    with pytest.raises(InputError, match="symlink out"):
        read_onnx(path)


def test_external_data_shorter_than_declared_is_refused(tmp_path):
    path, _ = external_model(tmp_path)
    data = path.parent / "weights.bin"
    data.write_bytes(data.read_bytes()[:-40])
    with pytest.raises(InputError, match="truncated"):
        read_onnx(path)


def test_external_data_missing_file(tmp_path):
    path, _ = external_model(tmp_path)
    (path.parent / "weights.bin").unlink()
    with pytest.raises(InputError, match="missing"):
        read_onnx(path)


# --------------------------------------------------------------------------------------------------- bad input


def small_model_bytes():
    nodes = [helper.make_node("Conv", ["X", "w"], ["out"], name="c")]
    return make_model(nodes, [init("w", rand(8, 8, 3, 3))]).SerializeToString()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such model file"):
        read_onnx(tmp_path / "absent.onnx")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_file(tmp_path, fraction):
    data = small_model_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(InputError, match=str(path)):
        read_onnx(path)


@pytest.mark.parametrize("content", [b"", b"hello, this is not a model\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256))])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"x\.onnx"):
        read_onnx(path)


def test_declared_shape_larger_than_raw_bytes(tmp_path):
    t = init("w", rand(2, 2, 3, 3))
    t.dims[:] = [2000, 2000, 3, 3]
    nodes = [helper.make_node("Conv", ["X", "w"], ["out"], name="c")]
    path = save(make_model(nodes, [t], check=False), tmp_path / "big.onnx")
    with pytest.raises(InputError, match="holds 144 bytes"):
        read_onnx(path)


def test_dangling_weight_reference(tmp_path):
    nodes = [helper.make_node("Conv", ["X", "gone"], ["out"], name="c")]
    path = save(make_model(nodes, check=False), tmp_path / "dangling.onnx")
    with pytest.raises(InputError, match="neither stored nor produced"):
        read_onnx(path)


def test_no_3x3_convolutions(tmp_path):
    nodes = [helper.make_node("Conv", ["X", "w"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "v"], ["out"], name="c5")]
    path = save(make_model(nodes, [init("w", rand(2, 2, 1, 1)), init("v", rand(2, 2, 5, 5))]), tmp_path / "n.onnx")
    with pytest.raises(InputError, match=r"no 3x3 convolutions.*\(1, 1\) filters.*nothing to add"):
        read_onnx(path)


def test_missing_onnx_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(InputError, match=r"pip install 'filtershift\[onnx\]'"):
        read_onnx(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="session")
def yolov8n() -> str:
    """nudenet's YOLOv8n detector (320n.onnx), from its wheel, cached in ~/.cache/filtershift/test-models."""
    target = MODEL_CACHE / "nudenet-3.4.2-320n.onnx"
    if target.is_file():
        return str(target)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(MODEL_CACHE.glob("nudenet-3.4.2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", NUDENET, "-d", str(MODEL_CACHE)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(MODEL_CACHE.glob("nudenet-3.4.2-*.whl"))
        if done.returncode != 0 or not wheels:
            pytest.fail(f"downloading the test model failed: {' '.join(cmd)} exited {done.returncode}\n"
                        f"{done.stdout}\n{done.stderr}")
    with zipfile.ZipFile(wheels[0]) as z:
        tmp = target.with_suffix(".part")
        tmp.write_bytes(z.read("nudenet/320n.onnx"))
        tmp.replace(target)
    return str(target)


def reference_reading(path):
    """Independent reading in the way the CNN-Filter-DB extraction does it: breadth-first levels from every
    node that eats a graph input, each node keeping the largest level it is met at."""
    model = onnx.load(path)
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    feeds = {i.name for i in g.input} - set(inits)
    consumers = defaultdict(list)
    for k, n in enumerate(g.node):
        for i in n.input:
            consumers[i].append(k)
    level = {}
    for start in {k for f in feeds for k in consumers[f]}:
        frontier, d = {start}, 0
        while frontier:
            for k in frontier:
                level[k] = max(level.get(k, -1), d)
            frontier = {c for k in frontier for o in g.node[k].output for c in consumers[o]}
            d += 1
    convs = [(k, n) for k, n in enumerate(g.node) if n.op_type == "Conv" and inits[n.input[1]].ndim == 4]
    conv_levels = sorted({level[k] for k, _ in convs})
    out = [(conv_levels.index(level[k]), k, n.name, inits[n.input[1]]) for k, n in convs
           if inits[n.input[1]].shape[2:] == (3, 3)]
    return sorted(out, key=lambda t: (t[0], t[1])), len(conv_levels), len(set(level.values()))


def test_real_model_against_independent_reading(yolov8n):
    m = read_onnx(yolov8n)
    ref, n_levels, depth = reference_reading(yolov8n)
    assert len(m.layers) == len(ref) == 39
    assert m.filters().shape == (sum(w.shape[0] * w.shape[1] for *_, w in ref), 9)
    assert [lay.name for lay in m.layers] == [name for _, _, name, _ in ref]
    assert [lay.conv_depth for lay in m.layers] == [r for r, *_ in ref]
    assert [lay.conv_depth_norm for lay in m.layers] == pytest.approx([r / (n_levels - 1) for r, *_ in ref])
    assert m.meta["depth"] == depth
    for lay, (_, _, _, w) in zip(m.layers, ref):
        assert (lay.out_channels, lay.in_channels, lay.groups) == (w.shape[0], w.shape[1], 1)
    first, last = m.layers[0].weights, m.layers[-1].weights
    np.testing.assert_array_equal(first[5], ref[0][3][1, 2].ravel())  # in_channels 3: filter 5 is o=1, i=2
    np.testing.assert_array_equal(last[-1], ref[-1][3][-1, -1].ravel())
    o, i = 17, 3
    np.testing.assert_array_equal(m.layers[10].weights[o * ref[10][3].shape[1] + i], ref[10][3][o, i].ravel())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_onnx(yolov8n)
