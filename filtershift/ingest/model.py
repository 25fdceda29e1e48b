"""The in-memory result of reading a trained model, and the conv-depth rule shared by every model reader.

A reader (ONNX, PyTorch, safetensors) finds the model's 2-D convolutions and hands them to :func:`assemble`
as :class:`Conv` candidates (weight, graph depth, position); :func:`assemble` applies the CNN-Filter-DB rules
(conv depth as a rank among the depths that hold a convolution, 3x3 kernels kept, per-shape filter counts) so
that every format yields the same kind of :class:`ModelFilters`. See ``docs/ingest.md``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from filtershift.errors import InputError


def require(package: str, where: str, reading: str, extra: str):
    """Import the optional ``package`` a reader needs, or raise an ``InputError`` naming the extra to install."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise InputError(f"{where}: reading {reading} needs the '{package}' package; install it with "
                         f"pip install 'filtershift[{extra}]'.") from None


def check_model_file(path: str) -> None:
    """A clear error for a model path that is not a file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such model file; check the path.")


@dataclass
class LayerFilters:
    """The 3x3 filters of one convolution: ``weights[o * (in/groups) + i]`` is output channel ``o``, input
    channel ``i`` (the row-major reshape of an ``(out, in/groups, 3, 3)`` weight)."""

    name: str
    conv_depth: int
    conv_depth_norm: float
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]
    weights: np.ndarray = field(repr=False)


@dataclass
class ModelFilters:
    """The 3x3 filters of one model, layers sorted by (conv depth, position in the graph), with the meta row
    (producer, op_set, depth, filter counts, operator counts) that joins the models table."""

    source: str
    kind: str
    sha256: str
    meta: dict
    layers: list[LayerFilters]

    def filters(self) -> np.ndarray:
        """All 3x3 filters as one float32 ``(n, 9)`` array, in layer order."""
        if not self.layers:
            return np.empty((0, 9), np.float32)
        return np.concatenate([layer.weights for layer in self.layers])

    @property
    def n_filters(self) -> int:
        return sum(layer.weights.shape[0] for layer in self.layers)


@dataclass
class Conv:
    """A 2-D convolution found by a reader: ``weight`` is ``(out, in/groups, kh, kw)`` float32, ``depth`` its
    graph depth (longest path from the inputs), ``position`` its order in the graph (the tie-breaker)."""

    name: str
    depth: int
    position: int
    weight: np.ndarray = field(repr=False)
    groups: int = 1


def longest_path_depths(n_nodes: int, preds: list, roots) -> list:
    """Depth of each node: 0 for a node fed by the graph inputs, else 1 + the largest depth of its predecessors,
    counted only over nodes reachable from ``roots`` (constant-only nodes get ``None``, as in the CNN-Filter-DB
    extraction). ``preds[v]`` lists the predecessors of node ``v``. Iterative (Kahn's order), so graphs of any
    size work; raises ``ValueError`` on a cycle."""
    succs = [[] for _ in range(n_nodes)]
    for v, ps in enumerate(preds):
        for u in set(ps):
            succs[u].append(v)
    reached = [False] * n_nodes
    stack = list(set(roots))
    for r in stack:
        reached[r] = True
    while stack:
        u = stack.pop()
        for v in succs[u]:
            if not reached[v]:
                reached[v] = True
                stack.append(v)
    indegree = [sum(1 for u in set(preds[v]) if reached[u]) if reached[v] else 0 for v in range(n_nodes)]
    depth = [0 if reached[v] else None for v in range(n_nodes)]
    ready = [v for v in range(n_nodes) if reached[v] and indegree[v] == 0]
    done = 0
    while ready:
        u = ready.pop()
        done += 1
        for v in succs[u]:
            depth[v] = max(depth[v], depth[u] + 1)
            indegree[v] -= 1
            if indegree[v] == 0:
                ready.append(v)
    if done != sum(reached):
        raise ValueError("the graph has a cycle")
    return depth


def rank_depths(depths) -> tuple[list[int], list[float]]:
    """``conv_depth`` (rank of each depth among the distinct depths given) and ``conv_depth_norm`` (rank /
    (number of distinct depths - 1), 0 when there is one)."""
    distinct = sorted(set(depths))
    rank = {d: i for i, d in enumerate(distinct)}
    span = max(len(distinct) - 1, 1)
    ranks = [rank[d] for d in depths]
    return ranks, [r / span for r in ranks]


def shape_key(kh: int, kw: int) -> str:
    """The meta column that counts a model's filters of one kernel shape, as CNN-Filter-DB names it."""
    return f"({kh}, {kw}) filters"


def assemble(source: str, kind: str, convs: list[Conv], meta: dict) -> ModelFilters:
    """Rank the depths of all 2-D convolutions (any kernel size), keep the 3x3 ones, count filters per kernel
    shape and fingerprint the kept weights; refuses a model with no 3x3 convolution (nothing to add)."""
    ranks, norms = rank_depths([c.depth for c in convs])
    counts: dict[str, int] = defaultdict(int)
    kept = []
    for c, rank, norm in zip(convs, ranks, norms):
        out, in_g, kh, kw = c.weight.shape
        counts[shape_key(kh, kw)] += out * in_g
        if (kh, kw) == (3, 3):
            kept.append((rank, c.position, norm, c))
    total = sum(counts.values())
    if not kept:
        shapes = ", ".join(sorted(counts)) or "no 2-D convolutions at all"
        raise InputError(f"{source}: no 3x3 convolutions in this model ({shapes}); nothing to add.")
    kept.sort(key=lambda t: (t[0], t[1]))
    layers, digest = [], hashlib.sha256()
    for rank, _, norm, c in kept:
        out, in_g = c.weight.shape[:2]
        w = np.ascontiguousarray(c.weight, dtype="<f4").reshape(out * in_g, 9)
        digest.update(w.tobytes())
        layers.append(LayerFilters(c.name, int(rank), float(norm), int(in_g * c.groups), int(out), int(c.groups),
                                   (3, 3), w))
    meta = dict(meta)
    meta.update({"total_filters": int(total), "3x3_filter_share": counts[shape_key(3, 3)] / total})
    meta.update({k: int(v) for k, v in sorted(counts.items())})
    return ModelFilters(str(source), kind, digest.hexdigest(), meta, layers)
