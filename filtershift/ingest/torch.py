"""Readers of PyTorch models: an ``nn.Module``, a state_dict file (``torch.load(weights_only=True)`` only) and a
``.safetensors`` file (read with the safetensors numpy API, no torch needed).

A module gives exact conv depths (longest path in its ``torch.fx`` graph, as for ONNX) and groups; a bare file
gives only tensors, so every 4-D floating tensor is taken as a conv weight, its depth is its order in the file
and its groups are 1, unless the module it belongs to is passed as ``module=``. See ``docs/ingest.md``.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping

import numpy as np

from filtershift.errors import InputError, reason
from filtershift.ingest.model import Conv, ModelFilters, assemble, check_model_file, longest_path_depths, require

#: The model formats this module reads: suffix -> (format name, reader function); see :mod:`filtershift.ingest`.
FORMATS = {".pt": ("torch", "read_state_dict"), ".pth": ("torch", "read_state_dict"),
           ".bin": ("torch", "read_state_dict"), ".ckpt": ("torch", "read_state_dict"),
           ".safetensors": ("safetensors", "read_safetensors")}
#: Keys under which training scripts nest the state_dict of a checkpoint, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema", "model_ema")


def _import_torch(where: str):
    return require("torch", where, "PyTorch models", "torch")


def read_module(module, *, name: str | None = None, trace: bool = True) -> ModelFilters:
    """The 3x3 filters of the ``nn.Conv2d`` layers of a module, depths from its traced graph (or, when
    ``torch.fx`` cannot trace it, from registration order); ``name`` becomes the result's ``source``."""
    source = name or "<module>"
    torch = _import_torch(source)
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{source}: expected a torch.nn.Module, got {type(module).__name__}; pass a model "
                         "or a file path.")
    plan, meta = _plan(torch, module, source, trace)
    convs = [Conv(layer, depth, pos, _numpy(torch, conv.weight), conv.groups)
             for layer, _, depth, pos, conv in plan]
    meta = {"producer": f"pytorch {torch.__version__}", **meta}
    return assemble(source, "torch", convs, meta)


def read_state_dict(path, *, module=None) -> ModelFilters:
    """The 3x3 filters of a state_dict file (nested under "state_dict", "model", ... is unwrapped), loaded
    with ``weights_only=True``: a checkpoint that needs arbitrary unpickling is refused. ``module``: the
    ``nn.Module`` the weights belong to, for exact depths and groups."""
    path = os.fspath(path)
    torch = _import_torch(path)
    check_model_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found or "Weights only load failed" in str(e):
            what = f"the object {found.group(1)}" if found else "objects other than tensors and plain containers"
            raise InputError(f"{path}: the checkpoint holds {what}, which only full unpickling can load, and "
                             "unpickling an untrusted file can run arbitrary code; refusing it. Save the "
                             "weights alone (torch.save(model.state_dict(), ...) or safetensors) and read "
                             "that file.") from None
        raise InputError(f"{path}: not a readable PyTorch file, the file is corrupt or truncated "
                         f"({e}); save or download it again.") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable PyTorch file, the file is corrupt, truncated or of another "
                         f"format ({reason(e)}); save or "
                         "download it again.") from None
    state = _unwrap(torch, obj, path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    producer = "pytorch"
    if module is not None:
        return _with_module(torch, path, "torch", module, tensors, lambda t: _numpy(torch, t), producer)
    convs = []
    for key, t in tensors.items():
        if t.ndim == 4 and (t.is_floating_point() or t.is_quantized):
            convs.append(Conv(_layer_name(str(key)), len(convs), len(convs), _numpy(torch, t)))
    return assemble(path, "torch", convs, {"producer": producer, "Conv": len(convs)})


def read_safetensors(path, *, module=None) -> ModelFilters:
    """The 3x3 filters of a ``.safetensors`` file. The format keeps no tensor order, so without ``module``
    the depth order is the natural order of the tensor names (``layer.2`` before ``layer.10``)."""
    path = os.fspath(path)
    check_model_file(path)
    safe_open = require("safetensors", path, "safetensors files", "torch").safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            info = f.metadata() or {}
            keys = sorted(f.keys(), key=_natural)
            shapes = {k: f.get_slice(k).get_shape() for k in keys}
            dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
            wanted = [k for k in keys if len(shapes[k]) == 4 and dtypes[k].startswith(("F", "BF"))]
            arrays = {k: f.get_tensor(k) for k in wanted}
    except Exception as e:
        raise InputError(f"{path}: not a readable safetensors file, the file is corrupt, truncated or of "
                         f"another format ({reason(e)}); save or download it again.") from None
    producer = "safetensors" + (f" ({info['format']})" if "format" in info else "")
    if module is not None:
        torch = _import_torch(path)
        return _with_module(torch, path, "safetensors", module, arrays, _float32, producer)
    convs = [Conv(_layer_name(k), i, i, _float32(arrays[k])) for i, k in enumerate(wanted)]
    return assemble(path, "safetensors", convs, {"producer": producer, "Conv": len(convs)})


def _with_module(torch, path, kind, module, tensors, to_numpy, producer) -> ModelFilters:
    """Weights from a file, depths and groups from the module they belong to."""
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{path}: module= must be a torch.nn.Module, got {type(module).__name__}.")
    plan, meta = _plan(torch, module, path, trace=True)
    convs = []
    for layer, qualname, depth, pos, conv in plan:
        key = _find_key(tensors, f"{qualname}.weight")
        if key is None:
            raise InputError(f"{path}: no tensor for layer {qualname!r} (expected key '{qualname}.weight'); "
                             "the file does not belong to the module given. Pass the matching module.")
        w = to_numpy(tensors[key])
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise InputError(f"{path}: tensor {key!r} has shape {tuple(w.shape)} but layer {qualname!r} of the "
                             f"module needs {tuple(conv.weight.shape)}; pass the matching module.")
        convs.append(Conv(layer, depth, pos, w, conv.groups))
    return assemble(path, kind, convs, {"producer": producer, **meta})


def _plan(torch, module, where: str, trace: bool):
    """``(layer name, module path, graph depth, position, conv)`` of every ``nn.Conv2d`` call, and the meta
    counts; depths from ``torch.fx`` or, when tracing fails, from registration order."""
    convs = {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    if trace:
        try:
            graph = _trace(torch, module)
        except Exception as e:
            warnings.warn(f"{where}: torch.fx cannot trace the module ({reason(e)}); conv depths "
                          "follow the order in which the layers are registered instead.", stacklevel=3)
        else:
            return _plan_from_graph(graph, convs, where)
    plan = [(name, name, i, i, m) for i, (name, m) in enumerate(convs.items())]
    return plan, {"Conv": len(plan)}


def _plan_from_graph(graph, convs: dict, where: str):
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    index = {n: k for k, n in enumerate(nodes)}
    preds = [[index[p] for p in n.all_input_nodes if p in index] for n in nodes]
    roots = [k for k, n in enumerate(nodes) if any(p.op == "placeholder" for p in n.all_input_nodes)]
    try:
        depths = longest_path_depths(len(nodes), preds, roots)
    except ValueError:
        raise InputError(f"{where}: the traced graph has a cycle; the module cannot be read.") from None
    plan, calls = [], {}
    for k, n in enumerate(nodes):
        if n.op != "call_module" or n.target not in convs:
            continue
        if depths[k] is None:
            warnings.warn(f"{where}: Conv2d {n.target!r} is not fed by the module's inputs; skipped.",
                          stacklevel=4)
            continue
        calls[n.target] = calls.get(n.target, 0) + 1
        layer = n.target if calls[n.target] == 1 else f"{n.target}#{calls[n.target]}"
        plan.append((layer, n.target, depths[k], k, convs[n.target]))
    unused = sorted(set(convs) - set(calls))
    if unused:
        warnings.warn(f"{where}: Conv2d layer(s) {unused} are not used by forward(); skipped.", stacklevel=4)
    meta = {"depth": len({d for d in depths if d is not None}), "Conv": len(plan)}
    return plan, meta


def _trace(torch, module):
    """The ``torch.fx`` graph of a module, every ``nn.Conv2d`` (subclasses included) kept as one leaf call."""

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, torch.nn.Conv2d) or super().is_leaf_module(m, qualname)

    return Tracer().trace(module)


def _numpy(torch, t) -> np.ndarray:
    t = t.detach()
    if t.is_quantized:
        t = t.dequantize()
    return t.to(device="cpu", dtype=torch.float32).numpy()


def _float32(a) -> np.ndarray:
    return np.asarray(a).astype(np.float32)


def _unwrap(torch, obj, path: str) -> Mapping:
    """The mapping of names to tensors inside a checkpoint: the object itself, or the first wrapper key."""
    for _ in range(8):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise InputError(f"{path}: no state_dict (a mapping of names to tensors) found, at the top level or under "
                     f"{list(WRAPPER_KEYS)}; save model.state_dict() and read that file.")


def _find_key(tensors: Mapping, key: str):
    """``key`` itself, or with the prefix a wrapper added (``module.`` of DataParallel, ``model.``)."""
    if key in tensors:
        return key
    matches = [k for k in tensors if k.endswith("." + key)]
    return matches[0] if len(matches) == 1 else None


def _layer_name(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def _natural(key: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key)]
