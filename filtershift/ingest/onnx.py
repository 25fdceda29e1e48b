"""Reader of ONNX models: the 3x3 convolution filters and the CNN-Filter-DB meta row of one ``.onnx`` file.

Weights are found whether an exporter stored them as initializers or behind Constant, Identity, Cast and
DequantizeLinear nodes, and quantized convolutions (QLinearConv, ConvInteger) are dequantized. External data is
read by this module, never by ``onnx``: each location must stay inside the model's directory and each tensor's
declared size must match the bytes on disk. Depths follow the CNN-Filter-DB extraction (``docs/ingest.md``).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter

import numpy as np

from filtershift.errors import InputError, reason
from filtershift.ingest.model import Conv, ModelFilters, assemble, check_model_file, longest_path_depths, require

#: The model format this module reads: suffix -> (format name, reader function); see :mod:`filtershift.ingest`.
FORMATS = {".onnx": ("onnx", "read_onnx")}
CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
PASS_THROUGH = {"Identity", "Cast"}
SUB_BYTE_BITS = {"INT2": 2, "UINT2": 2, "INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}
MAX_CHAIN = 64


class _Skip(Exception):
    """A convolution whose weight is not a constant of the file (a graph input, a computed tensor)."""


def read_onnx(path) -> ModelFilters:
    """The 3x3 convolution filters of an ONNX model file, with its meta row; raises ``InputError`` for a
    missing, corrupt, unsafe or conv-less file."""
    path = os.fspath(path)
    onnx = require("onnx", path, "ONNX models", "onnx")
    check_model_file(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX model, the file is corrupt, truncated or of another "
                         f"format ({reason(e)}); export or download it again.") from None
    if not model.ir_version or not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (no IR version or no graph nodes); give an .onnx file "
                         "exported by a framework.")
    try:
        return _Graph(path, onnx, model).extract()
    except InputError:
        raise
    except (TypeError, KeyError, IndexError, ValueError, OverflowError, UnicodeDecodeError, AttributeError,
            MemoryError) as e:
        raise InputError(f"{path}: malformed ONNX model: a node, attribute or tensor does not follow the ONNX "
                         f"specification ({reason(e)}); run onnx.checker.check_model on it, or "
                         "export it again.") from None


class _Graph:
    """One loaded model: tensor producers, constant resolution and graph depths."""

    def __init__(self, path: str, onnx, model):
        self.path, self.onnx, self.model = path, onnx, model
        self.base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        g = model.graph
        self.nodes = list(g.node)
        self.initializers = {t.name: t for t in g.initializer}
        self.inputs = {i.name for i in g.input} - set(self.initializers)
        self.producer, self.consumers = {}, {}
        for k, node in enumerate(self.nodes):
            for out in node.output:
                if out:
                    self.producer[out] = k
            for i in set(node.input):
                self.consumers.setdefault(i, []).append(node)

    def extract(self) -> ModelFilters:
        depths = self._depths()
        ops = Counter(n.op_type for n, d in zip(self.nodes, depths) if d is not None)
        convs = []
        for k, node in enumerate(self.nodes):
            if node.op_type not in CONV_OPS:
                continue
            name = node.name or node.output[0]
            if depths[k] is None:
                warnings.warn(f"{self.path}: {node.op_type} {name!r} is not fed by the graph inputs; skipped.",
                              stacklevel=2)
                continue
            try:
                weight = self._conv_weight(node)
            except _Skip as e:
                warnings.warn(f"{self.path}: {node.op_type} {name!r}: {e}; skipped.", stacklevel=2)
                continue
            if weight.ndim != 4:
                continue
            groups = self._attr(node, "group", 1)
            convs.append(Conv(name, depths[k], k, weight, groups))
        meta = {"producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
                "op_set": self._opset(), "depth": len({d for d in depths if d is not None})}
        meta.update(sorted(ops.items()))
        return assemble(self.path, "onnx", convs, meta)

    def _opset(self):
        versions = {o.domain: o.version for o in self.model.opset_import}
        v = versions.get("", versions.get("ai.onnx"))
        if v is None and self.model.opset_import:
            v = self.model.opset_import[0].version
        return None if v is None else int(v)

    def _depths(self) -> list:
        preds = [[self.producer[i] for i in node.input if i in self.producer] for node in self.nodes]
        roots = [k for k, node in enumerate(self.nodes) if any(i in self.inputs for i in node.input)]
        try:
            return longest_path_depths(len(self.nodes), preds, roots)
        except ValueError:
            raise InputError(f"{self.path}: the graph has a cycle, so it is not a valid ONNX model; "
                             "export it again.") from None

    @staticmethod
    def _attr(node, name: str, default):
        for a in node.attribute:
            if a.name == name:
                return a.i if a.type == a.INT else a
        return default

    def _conv_weight(self, node) -> np.ndarray:
        """The float32 weight of a Conv, or the dequantized weight of a ConvInteger / QLinearConv."""
        slot = CONV_OPS[node.op_type]
        if len(node.input) <= slot or not node.input[slot]:
            raise _Skip("no weight input")
        w = self._constant(node.input[slot])
        if node.op_type == "Conv":
            return w.astype(np.float32)
        if w.ndim != 4:
            return w
        if node.op_type == "QLinearConv":
            scale = self._constant(node.input[4])
            zero = self._constant(node.input[5]) if len(node.input) > 5 and node.input[5] else None
        else:
            zero = self._constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            scale = self._conv_integer_scale(node)
        return _dequantize(w, scale, zero, axis=0, where=f"{self.path}: {node.op_type} {node.name!r}")

    def _conv_integer_scale(self, node):
        """ConvInteger has no scale input: onnxruntime's dynamic quantization multiplies its output (after a
        Cast) by ``x_scale * w_scale``; the constant factor of that product is the weight scale. Without the
        pattern the weights stay as integers minus zero point."""
        consumers = self.consumers.get(node.output[0], [])
        if len(consumers) == 1 and consumers[0].op_type == "Cast":
            consumers = self.consumers.get(consumers[0].output[0], [])
        if len(consumers) == 1 and consumers[0].op_type == "Mul":
            for other in consumers[0].input:
                k = self.producer.get(other)
                if k is None or self.nodes[k].op_type != "Mul":
                    continue
                constants = []
                for factor in self.nodes[k].input:
                    try:
                        constants.append(self._constant(factor))
                    except _Skip:
                        pass
                if len(constants) == 1:
                    return constants[0]
        warnings.warn(f"{self.path}: ConvInteger {node.name!r}: no weight scale found after it; its filters are "
                      "kept as integer weights minus zero point.", stacklevel=2)
        return None

    def _constant(self, name: str, hops: int = 0) -> np.ndarray:
        """The value of a tensor that is a constant of the file: an initializer, or the output of Constant,
        Identity, Cast or DequantizeLinear nodes over constants."""
        if hops > MAX_CHAIN:
            raise _Skip(f"weight {name!r} is behind more than {MAX_CHAIN} nodes")
        if name in self.initializers:
            return self._tensor(self.initializers[name])
        if name in self.inputs:
            raise _Skip(f"weight {name!r} is a graph input with no initializer")
        if name not in self.producer:
            raise InputError(f"{self.path}: tensor {name!r} is used but neither stored nor produced by any "
                             "node; the file is truncated or corrupt. Export or download it again.")
        node = self.nodes[self.producer[name]]
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._tensor(a.t)
            raise _Skip(f"weight {name!r} is a non-tensor Constant")
        if node.op_type in PASS_THROUGH:
            x = self._constant(node.input[0], hops + 1)
            if node.op_type == "Cast":
                to = self._attr(node, "to", None)
                x = x.astype(self.onnx.helper.tensor_dtype_to_np_dtype(to))
            return x
        if node.op_type == "DequantizeLinear":
            x = self._constant(node.input[0], hops + 1)
            scale = self._constant(node.input[1], hops + 1)
            zero = self._constant(node.input[2], hops + 1) if len(node.input) > 2 and node.input[2] else None
            return _dequantize(x, scale, zero, axis=self._attr(node, "axis", 1),
                               block=self._attr(node, "block_size", 0), where=f"{self.path}: {name!r}")
        raise _Skip(f"weight {name!r} is computed by a {node.op_type} node, not stored")

    def _tensor(self, t) -> np.ndarray:
        """A TensorProto as numpy, sizes checked, external data read from inside the model's directory."""
        helper, numpy_helper = self.onnx.helper, self.onnx.numpy_helper
        dtype_name = self.onnx.TensorProto.DataType.Name(t.data_type)
        if dtype_name in ("UNDEFINED", "STRING"):
            raise _Skip(f"tensor {t.name!r} of type {dtype_name} is not numeric")
        n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        if any(d < 0 for d in t.dims):
            raise InputError(f"{self.path}: tensor {t.name!r} declares negative dimensions {list(t.dims)}; "
                             "the file is corrupt.")
        bits = SUB_BYTE_BITS.get(dtype_name) or 8 * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        nbytes = -(-n * bits // 8)
        if t.data_location == t.EXTERNAL:
            t = self._external(t, nbytes)
        elif t.HasField("raw_data") and len(t.raw_data) != nbytes:
            raise InputError(f"{self.path}: tensor {t.name!r} declares {list(t.dims)} {dtype_name} "
                             f"({nbytes} bytes) but holds {len(t.raw_data)} bytes; the file is truncated or "
                             "corrupt. Export or download it again.")
        try:
            return numpy_helper.to_array(t)
        except Exception as e:
            raise InputError(f"{self.path}: tensor {t.name!r} ({list(t.dims)} {dtype_name}) cannot be read "
                             f"({e}); the file is truncated or corrupt.") from None

    def _external(self, t, nbytes: int):
        """A copy of ``t`` with its external bytes inline, after refusing paths that leave the model's
        directory and sizes the data file does not hold."""
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        where = f"{self.path}: tensor {t.name!r}"
        parts = location.replace("\\", "/").split("/")
        if (not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts
                or os.path.splitdrive(location)[0]):
            raise InputError(f"{where} has external data at {location!r}, outside the model's directory "
                             "(path traversal); refusing it. Keep external data files next to the model.")
        full = os.path.realpath(os.path.join(self.base, location))
        if os.path.commonpath([full, self.base]) != self.base:
            raise InputError(f"{where} has external data at {location!r}, which resolves to {full}, outside "
                             "the model's directory (a symlink out: path traversal); refusing it. Copy the "
                             "data file next to the model.")
        if not os.path.isfile(full):
            raise InputError(f"{where}: its external data file {location!r} is missing; copy it next to the "
                             "model.")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else nbytes
        except ValueError:
            raise InputError(f"{where}: unreadable external data offset/length {info}; the file is "
                             "corrupt.") from None
        size = os.path.getsize(full)
        if offset < 0 or length != nbytes or offset + nbytes > size:
            raise InputError(f"{where} declares {list(t.dims)} ({nbytes} bytes) at offset {offset} of "
                             f"{location!r} (length {length}), but that file holds {size} bytes; the data file "
                             "is truncated or does not belong to this model.")
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(nbytes)
        inline = type(t)()
        inline.CopyFrom(t)
        del inline.external_data[:]
        inline.data_location = t.DEFAULT
        inline.raw_data = data
        return inline


def _dequantize(w, scale, zero, *, axis: int, block: int = 0, where: str) -> np.ndarray:
    """``(w - zero) * scale`` in float32, per tensor, per channel along ``axis`` or per block along it."""
    x = w.astype(np.float32)
    axis = axis % max(x.ndim, 1)

    def expand(p):
        p = np.asarray(p).astype(np.float32)
        if p.size == 1:
            return p.reshape(())
        if block:
            p = np.repeat(p, block, axis=axis)
            p = np.take(p, np.arange(x.shape[axis]), axis=axis)
            if p.shape != x.shape:
                raise InputError(f"{where}: blocked quantization parameters of shape {p.shape} do not fit "
                                 f"the weight {x.shape}; the model is malformed.")
            return p
        if p.size != x.shape[axis] or sum(d > 1 for d in p.shape) > 1:
            raise InputError(f"{where}: quantization parameters of shape {p.shape} do not match axis {axis} "
                             f"of the weight {x.shape}; the model is malformed.")
        shape = [1] * x.ndim
        shape[axis] = p.size
        return p.reshape(shape)

    if zero is not None:
        x = x - expand(zero)
    if scale is not None:
        x = x * expand(scale)
    return x.astype(np.float32)
