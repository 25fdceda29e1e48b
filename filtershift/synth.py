"""Synthetic CNN-Filter-DB data sets with planted truth, for tests, the demo and benchmarks.

``synthesize`` writes a ``dataset.h5`` in the layout of the real release (v1.0 or v0.1: filter array plus pandas
meta table) whose filters carry known structure, and a JSON sidecar ``<OUT>.truth.json`` that says what was planted:

- **Distribution shifts.** Every filter is drawn from a three-part mixture: a reference family ``R`` of trained-looking
  kernels (Gaussian blobs, first and second Gaussian derivatives, Laplacians, plus noise), a task family ``T``
  (unstructured isotropic noise) and a visual-category family ``C`` (smooth: constant and wide-blob kernels). A
  model of task ``t`` and category ``c`` draws from ``T`` with probability ``a_t``, from ``C`` with
  ``(1 - a_t) b_c`` and from ``R`` otherwise. ``a`` is 0 for the reference task (Classification) and grows in
  equal steps along a seeded order of the other tasks; ``b`` likewise over visual categories (reference
  ``natural``). A group's distribution moves away from the reference along one direction as its weight grows, so a
  divergence to the reference grows in the planted order. The design is nested so that the two groupings do not
  mask each other: the other visual categories occur only among Classification models and the other tasks only on
  ``natural`` data, so every non-reference group differs from its reference along its own family alone.
- **Depth.** Magnitudes shrink with depth: the record scale is ``0.25 exp(-DEPTH_DECAY conv_depth_norm)``; each
  filter has a further log-normal factor (sigma 0.5). The decay is kept mild because groups differ in depth mix:
  a per-component histogram divergence recovers the planted order with wide margins on unit-normalised filters and
  with smaller margins on raw filters (checked over many seeds; the tests re-check it).
- **Degenerate records.** A few records hold an exact share ``k/n`` of all-zero filters, and a few hold copies of
  scaled copies of one filter (scale 1 +- 0.3) plus isotropic noise of relative size 1e-3: their variance lies
  along one direction, so their variance entropy (torchconvquality's definition, centred) is near 0.
- **A robustness study** (off by default: ``robust_within``, ``entropy_gain``). ``Robust`` changes the filters of
  the models of one training data set only, and variance entropy falls with model size, for
  ``examples/robustness_study.py`` and ``tests/test_robustness_study.py`` to recover.

Generation is block by block (``BLOCK`` filters), so memory does not grow with N. Filters are assembled from
small banks of kernels indexed by one 64-bit PCG64 draw per filter, which keeps generation well above 10 M
filters/s on one core. A filter's value depends only on the seed and its place in its record, not on the file
layout: ``shuffle_records=True`` writes the same records at permuted positions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import warnings
from dataclasses import dataclass, field

import h5py
import numba
import numpy as np
import pandas as pd

from filtershift import progress
from filtershift.errors import InputError
from filtershift.ingest.h5 import V01_LABELS, Source, parse_csv_meta, parse_meta, visual_category
from filtershift.outputs import local_path

#: Filters generated and written per step; bounds memory whatever N is.
BLOCK = 1 << 19
#: Kernels per bank; bank indices are 16-bit fields of one random draw.
BANK = 1 << 16
MIN_RECORD = 8
MIN_MODEL = 64
#: v0.1 meta tables list every filter id (pickled Python lists): keep them to sizes that fit in memory.
MAX_V01_FILTERS = 20_000_000
TASK_STEP = 0.12
CATEGORY_STEP = 0.10
NOISE = 0.3
SCALE_SIGMA = 0.5
DEPTH_DECAY = 0.4
DUPLICATE_NOISE = 1e-3
DUPLICATE_SPREAD = 0.3
SPARSITIES = (0.5, 0.9, 0.75)
#: robust_within: share of a robust model's filters drawn from the smooth family inside the planted training set
ROBUST_SHARE = 0.3
TRUTH_SCHEMA = 1

FORMATS = ("h5", "zarr")
STYLES = ("v1.0", "v0.1")
META_FORMATS = ("table", "fixed", "csv")
#: Visual-category labels as the v0.1 release spells them (v1.0 label -> v0.1 label).
V01_CATEGORY_LABELS = {new: old for old, new in V01_LABELS.items()}
LAYOUTS = ("flat", "3x3")
DTYPES = ("float32", "float16", "float64")

REFERENCE_TASK = "Classification"
REFERENCE_CATEGORY = "natural"
#: Task -> (share of models, raw labels as they appear in the real release).
TASKS = {
    "Classification": (0.50, ["Classification"]),
    "Segmentation": (0.15, ["Segmentation", "Semantic Segmentation", "Segmentation (instance)"]),
    "Detection": (0.15, ["Detection"]),
    "Face Detection": (0.10, ["Face Detection"]),
    "Generative": (0.10, ["Generative"]),
    "Super Resolution": (0.10, ["Super Resolution"]),
}
#: Visual category -> (share of models, training data sets).
CATEGORIES = {
    "natural": (0.30, None),
    "medical ct": (0.10, ["LiTS", "KiTS19", "COVIDx-CT"]),
    "medical mri": (0.10, ["BraTS", "fastMRI"]),
    "astronomy": (0.10, ["Galaxy10 DECals", "Galaxy Zoo"]),
    "satellite": (0.10, ["EuroSAT", "SpaceNet", "UC Merced"]),
    "fractals": (0.10, ["FractalDB-1k", "FractalDB-10k"]),
    "handwriting": (0.10, ["MNIST", "EMNIST", "KMNIST"]),
}
NATURAL_DATASETS = {
    "Classification": ["ImageNet1k", "CIFAR-10", "CIFAR-100", "SVHN"],
    "Segmentation": ["Cityscapes", "Pascal VOC", "ADE20K"],
    "Detection": ["COCO", "Pascal VOC"],
    "Face Detection": ["WIDER FACE"],
    "Generative": ["CelebA", "horse2zebra"],
    "Super Resolution": ["DIV2K"],
}

#: The training data sets that ``robust_within`` can plant in: those of natural-image Classification models only.
ROBUST_STRATA = tuple(NATURAL_DATASETS[REFERENCE_TASK])


def _channels(widths):
    return [a * b for a, b in zip(widths[:-1], widths[1:])]


RESNET50_3X3 = [64 * 64] * 3 + [128 * 128] * 4 + [256 * 256] * 6 + [512 * 512] * 3
#: Architecture -> (3x3 filters per conv depth in the full model, ONNX operator counts).
ARCHS = {
    "VGG-16": (_channels([3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]),
               {"Conv": 13, "Relu": 15, "MaxPool": 5, "Gemm": 3, "Flatten": 1}),
    "ResNet-18": (_channels([64] * 5 + [128] * 4 + [256] * 4 + [512] * 4),
                  {"Conv": 20, "Relu": 17, "Add": 8, "BatchNormalization": 20, "MaxPool": 1,
                   "GlobalAveragePool": 1, "Gemm": 1, "Flatten": 1}),
    "ResNet-50": (RESNET50_3X3, {"Conv": 53, "Relu": 49, "Add": 16, "BatchNormalization": 53, "MaxPool": 1,
                                 "GlobalAveragePool": 1, "Gemm": 1, "Flatten": 1}),
    "MobileNet-v2": ([96, 32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576, 960, 960, 960],
                     {"Conv": 52, "Clip": 35, "Add": 10, "GlobalAveragePool": 1, "Gemm": 1, "Flatten": 1}),
    "Small-CNN": (_channels([1, 32, 64, 128]), {"Conv": 3, "Relu": 4, "MaxPool": 3, "Gemm": 2, "Flatten": 1}),
    "U-Net": (_channels([3, 64, 64, 128, 128, 256, 256, 512, 512, 1024, 1024, 512, 512, 256, 256, 128, 128, 64, 64]),
              {"Conv": 19, "Relu": 18, "MaxPool": 4, "ConvTranspose": 4, "Concat": 4}),
    "DeepLabV3-ResNet50": (RESNET50_3X3 + [256 * 2048] * 3,
                           {"Conv": 60, "Relu": 56, "Add": 16, "BatchNormalization": 58, "Concat": 1,
                            "Resize": 2}),
    "YOLOv3": ([3 * 32, 32 * 64, 64 * 128, 128 * 256, 256 * 512, 512 * 1024, 1024 * 1024, 512 * 512, 256 * 256],
               {"Conv": 75, "LeakyRelu": 72, "Add": 23, "Concat": 2, "Upsample": 2, "BatchNormalization": 72}),
    "SSD300-VGG16": (_channels([3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 1024])
                     + [256 * 512, 128 * 256, 128 * 256, 128 * 256],
                     {"Conv": 35, "Relu": 26, "MaxPool": 5, "Concat": 2, "Softmax": 1, "Reshape": 12}),
    "FasterRCNN-ResNet50": (RESNET50_3X3 + [256 * 256] * 4,
                            {"Conv": 71, "Relu": 49, "Add": 16, "TopK": 5, "NonMaxSuppression": 1,
                             "RoiAlign": 4, "Gather": 40}),
    "RetinaFace-MobileNet0.25": ([8, 16, 32, 32, 64, 64, 128, 128, 128, 128, 128, 128, 256, 256, 64 * 64],
                                 {"Conv": 57, "LeakyRelu": 40, "Add": 2, "Concat": 5, "Resize": 2}),
    "MTCNN": (_channels([3, 10, 16, 32]) + _channels([3, 28, 48, 64]),
              {"Conv": 9, "PRelu": 10, "MaxPool": 4, "Gemm": 4, "Softmax": 3}),
    "CycleGAN-ResNet": ([64 * 128, 128 * 256] + [256 * 256] * 18,
                        {"Conv": 24, "InstanceNormalization": 22, "Relu": 14, "Add": 9, "ConvTranspose": 2,
                         "Pad": 20, "Tanh": 1}),
    "Pix2Pix-U-Net": (_channels([3, 64, 128, 256, 512, 512, 512]),
                      {"Conv": 8, "LeakyRelu": 7, "ConvTranspose": 8, "Concat": 7, "Tanh": 1}),
    "SRResNet": ([64 * 64] * 33 + [64 * 256] * 2,
                 {"Conv": 37, "PRelu": 19, "Add": 17, "BatchNormalization": 33, "DepthToSpace": 2}),
}
ARCHS_BY_TASK = {
    "Classification": ["VGG-16", "ResNet-18", "ResNet-50", "MobileNet-v2", "Small-CNN"],
    "Segmentation": ["U-Net", "DeepLabV3-ResNet50"],
    "Detection": ["YOLOv3", "SSD300-VGG16", "FasterRCNN-ResNet50"],
    "Face Detection": ["RetinaFace-MobileNet0.25", "MTCNN"],
    "Generative": ["CycleGAN-ResNet", "Pix2Pix-U-Net"],
    "Super Resolution": ["SRResNet"],
}
OP_COLUMNS = ["Conv", "Relu", "Add", "BatchNormalization", "MaxPool", "Concat", "Upsample", "Resize", "Gemm",
              "Flatten", "GlobalAveragePool", "Clip", "LeakyRelu", "PRelu", "ConvTranspose", "InstanceNormalization",
              "Pad", "Tanh", "Softmax", "Reshape", "TopK", "NonMaxSuppression", "RoiAlign", "Gather",
              "DepthToSpace"]
PRODUCERS = ["pytorch", "pytorch", "pytorch", "tf2onnx", "keras2onnx"]
EXTRA_COLUMN = "annotator_note"


def truth_path(out) -> pathlib.Path:
    """The sidecar of ``out``: ``<OUT>.truth.json`` in the same folder."""
    out = pathlib.Path(out)
    return out.with_name(out.name + ".truth.json")


def read_truth(out) -> dict:
    """The planted truth of a synthetic data set (the parsed ``<OUT>.truth.json``)."""
    path = truth_path(out)
    if not path.exists():
        raise InputError(f"{path}: no truth sidecar. It is written by filtershift synth next to the data set; "
                         "generate the data set again with synthesize() or `filtershift synth`.")
    return json.loads(path.read_text())


def synthesize(out, n_filters: int = 1_000_000, n_models: int = 40, seed: int = 0, format: str = "h5",
               style: str = "v1.0", meta_format: str = "table", layout: str = "flat", dtype: str = "float32",
               shuffle_records: bool = False, overwrite: bool = False, resume: bool = False,
               layer_meta: bool = False, robust_within: str | None = None,
               entropy_gain: float = 0.0) -> pathlib.Path:
    """Write a synthetic CNN-Filter-DB data set and its planted truth.

    The data set goes to ``out`` (a ``dataset.h5``, or a store when ``format="zarr"``) and its planted truth to
    ``<OUT>.truth.json``; returns ``out``. Same arguments, same bytes: the filters, the meta table and the truth
    depend only on the arguments.

    Parameters
    ----------
    out : str or os.PathLike
        Local output path; its directory must exist.
    n_filters : int, default 1_000_000
        Number of filters, at least 64 per model (at most 20,000,000 with ``style="v0.1"``).
    n_models : int, default 40
        Number of models, at least 1.
    seed : int, default 0
        Non-negative seed; everything written depends only on the arguments.
    format : {"h5", "zarr"}, default "h5"
        Write the ``dataset.h5`` source, or a store at ``out``: the store ``filtershift convert`` would make of that
        file (same weights, tables and manifest; provenance kind ``synth``), written directly chunk by chunk.
    style : {"v1.0", "v0.1"}, default "v1.0"
        Layout of the release imitated: v1.0 meta rows hold filter id ranges, v0.1 list every filter id (needs
        ``meta_format="fixed"`` or ``"csv"``), name the visual category ``Datatype`` and label fractals ``formula``.
    meta_format : {"table", "fixed", "csv"}, default "table"
        pandas HDF5 format of the meta table, or ``"csv"``: its CSV text as one bytes dataset (some v0.1 files).
    layout : {"flat", "3x3"}, default "flat"
        Filter array shape: (N, 9) or (N, 3, 3).
    dtype : {"float32", "float16", "float64"}, default "float32"
        Filter dtype in the file.
    shuffle_records : bool, default False
        Write the same records at permuted positions.
    overwrite : bool, default False
        Replace an existing ``out``.
    resume : bool, default False
        ``format="zarr"`` only: finish a store whose writing was interrupted, with the same arguments (as
        ``filtershift convert --resume``); excludes ``overwrite``.
    layer_meta : bool, default False
        Write the meta table one row per layer (index level ``layer_id``, columns ``layer_name``, ``in_channels``,
        ``out_channels``, ``groups``; the last two layers of a model of 3+ layers are parallel branches at one conv
        depth) with extra model columns (:data:`LAYER_META_COLUMNS`); the planted truth is otherwise the same.
    robust_within : str, optional
        Plant an effect of the ``Robust`` column inside one training data set (needs ``layer_meta``; one of
        :data:`ROBUST_STRATA`): every natural-image Classification model is trained on it, every second of them
        (in model order) is robust, and a robust model trained on it draws :data:`ROBUST_SHARE` of its filters from
        the smooth family. Elsewhere ``Robust`` is the seeded draw and changes no filter (truth: ``robustness``).
    entropy_gain : float, default 0.0
        Plant a fall of variance entropy with model size: each filter is multiplied by ``1 + g (k . u)^2``, ``k``
        the filter's direction, ``u`` the unit constant kernel, and ``g = (1 + entropy_gain)^x - 1`` with ``x``
        the model's place between the fewest (0) and the most (1) filters on a log scale: smooth filters dominate
        the layers of big models. A positive factor per filter leaves the scaled filters, and so every drift, as
        they are (up to float32 rounding; truth: ``entropy``).

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    filtershift.errors.InputError
        If an argument is invalid or out of range, ``out`` exists without ``overwrite``, or its directory is missing.
    """
    out = local_path(out, "OUT")
    _validate(out, n_filters, n_models, seed, format, style, meta_format, layout, dtype, overwrite, resume)
    _validate_planting(robust_within, entropy_gain, layer_meta)
    planting = {**({"robust_within": robust_within} if robust_within else {}),
                **({"entropy_gain": float(entropy_gain)} if entropy_gain else {})}
    plan = _plan(int(n_filters), int(n_models), int(seed), style, bool(shuffle_records), bool(layer_meta),
                 **planting)
    truth = _truth(plan, seed=int(seed), style=style, meta_format=meta_format, layout=layout, dtype=dtype,
                   shuffle_records=bool(shuffle_records), format=format,
                   **({"layer_meta": True} if layer_meta else {}), **planting)
    text = json.dumps(truth, indent=1, sort_keys=True) + "\n"
    tmp = out.with_name(f".{out.name}.synth-{os.getpid()}.h5")
    truth_tmp = out.with_name(f".{truth_path(out).name}.{os.getpid()}.tmp")
    try:
        if format == "h5":
            _write_h5(tmp, plan, style=style, meta_format=meta_format, layout=layout, dtype=dtype)
            truth_tmp.write_text(text)
            truth_path(out).unlink(missing_ok=True)
            if out.is_dir():
                shutil.rmtree(out)
            os.replace(tmp, out)
        else:
            truth_path(out).unlink(missing_ok=True)
            _write_store(out, plan, text, style=style, meta_format=meta_format, layout=layout, dtype=dtype,
                         overwrite=overwrite, resume=resume)
            truth_tmp.write_text(text)
        os.replace(truth_tmp, truth_path(out))
    finally:
        tmp.unlink(missing_ok=True)
        truth_tmp.unlink(missing_ok=True)
    return out


def _validate(out, n_filters, n_models, seed, format, style, meta_format, layout, dtype, overwrite, resume) -> None:
    def choice(name, value, allowed):
        if value not in allowed:
            raise InputError(f"{name}={value!r} is not one of {list(allowed)}.")

    for name, value in (("n_filters", n_filters), ("n_models", n_models), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer, got {value!r}.")
    choice("format", format, FORMATS)
    choice("style", style, STYLES)
    choice("meta_format", meta_format, META_FORMATS)
    choice("layout", layout, LAYOUTS)
    choice("dtype", dtype, DTYPES)
    if n_models < 1:
        raise InputError(f"n_models must be at least 1, got {n_models}.")
    if n_filters < n_models * MIN_MODEL:
        raise InputError(f"n_filters={n_filters:,} is too small for {n_models} models: each model needs at least "
                         f"{MIN_MODEL} filters, so ask for n_filters >= {n_models * MIN_MODEL:,} or fewer models.")
    if seed < 0:
        raise InputError(f"seed must be non-negative, got {seed}.")
    if style == "v0.1" and meta_format == "table":
        raise InputError("style='v0.1' lists every filter id in the meta table; pandas stores list columns only "
                         "in its fixed format: pass meta_format='fixed' (or 'csv', the lists as text).")
    if style == "v0.1" and n_filters > MAX_V01_FILTERS:
        raise InputError(f"style='v0.1' keeps every filter id in memory as a Python list; at most "
                         f"{MAX_V01_FILTERS:,} filters. Use style='v1.0' (ranges) for larger data sets.")
    if resume and format != "zarr":
        raise InputError("resume=True (--resume) needs format='zarr': a dataset.h5 is written whole to a temporary "
                         "file and renamed, so there is nothing to resume. Pass overwrite=True (--overwrite).")
    if resume and overwrite:
        raise InputError("overwrite=True (--overwrite) and resume=True (--resume) exclude each other: resume keeps "
                         "the work done so far.")
    if out.exists() and not (overwrite or resume):
        resumable = " or resume=True (--resume) to finish an interrupted store," if format == "zarr" else ""
        raise InputError(f"{out}: already exists. Pass overwrite=True (--overwrite) to replace it,{resumable} or "
                         "choose another path.")
    if not out.parent.exists():
        raise InputError(f"{out.parent}: no such directory for {out.name}; create it first.")


def _validate_planting(robust_within, entropy_gain, layer_meta) -> None:
    if robust_within is not None and robust_within not in ROBUST_STRATA:
        raise InputError(f"robust_within={robust_within!r} is not one of {list(ROBUST_STRATA)} (the training data "
                         "sets of natural-image Classification models).")
    if robust_within is not None and not layer_meta:
        raise InputError("robust_within plants an effect of the Robust column, which only layer_meta=True "
                         "(--layer-meta) writes: pass it too.")
    if isinstance(entropy_gain, bool) or not isinstance(entropy_gain, (int, float, np.integer, np.floating)) \
            or not 0 <= entropy_gain < math.inf:
        raise InputError(f"entropy_gain must be a finite number >= 0, got {entropy_gain!r}.")


# ---- planning: models, records, layout ---------------------------------------------------------------------


def _quota(shares: dict, n: int) -> list:
    """``n`` labels in proportion to ``shares`` (largest remainder; every label once before any repeats)."""
    labels = list(shares)
    if n <= len(labels):
        return labels[:n]
    weights = np.array([shares[k] for k in labels], dtype=float)
    rest = n - len(labels)
    raw = weights / weights.sum() * rest
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: rest - counts.sum()]] += 1
    return [k for k, c in zip(labels, counts + 1) for _ in range(c)]


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Split ``total`` into ``len(weights)`` parts of at least ``minimum``, the rest in proportion to the weights
    (floored; the last part absorbs the remainder)."""
    parts = np.full(len(weights), minimum, dtype=np.int64)
    rest = total - parts.sum()
    parts += np.floor(weights / weights.sum() * rest).astype(np.int64)
    parts[-1] += total - parts.sum()
    return parts


def _plan(n_filters: int, n_models: int, seed: int, style: str, shuffle: bool, per_layer: bool = False,
          robust_within: str | None = None, entropy_gain: float = 0.0) -> dict:
    """Models, their records (with ``per_layer``: the last two records of a model of 3+ share a conv depth, parallel
    branches of one depth) and where the records go in the file; with ``robust_within`` or ``entropy_gain`` the
    planted effects (:func:`_plant_robust`, :func:`_plant_entropy`), which draw no random numbers, so the rest of
    the plan is the same with or without them."""
    rng = np.random.default_rng([seed, 0])
    tasks = list(rng.permutation(np.array(_quota({k: v[0] for k, v in TASKS.items()}, n_models), dtype=object)))
    # nested design: other categories only among reference-task models, other tasks only on the reference
    # category, so a group differs from its reference along its own family alone
    reference_models = [m for m in range(n_models) if tasks[m] == REFERENCE_TASK]
    dealt = _quota({k: v[0] for k, v in CATEGORIES.items()}, len(reference_models))
    category_of = [REFERENCE_CATEGORY] * n_models
    for m, c in zip(reference_models, rng.permutation(np.array(dealt, dtype=object))):
        category_of[m] = c
    task_order = [t for t in rng.permutation(np.array(list(TASKS)[1:], dtype=object)) if t in tasks]
    cat_order = [c for c in rng.permutation(np.array(list(CATEGORIES)[1:], dtype=object)) if c in category_of]
    task_weight = {REFERENCE_TASK: 0.0, **{t: round(TASK_STEP * (i + 1), 6) for i, t in enumerate(task_order)}}
    cat_weight = {REFERENCE_CATEGORY: 0.0,
                  **{c: round(CATEGORY_STEP * (i + 1), 6) for i, c in enumerate(cat_order)}}

    models = []
    for m in range(n_models):
        arch = ARCHS_BY_TASK[tasks[m]][int(rng.integers(len(ARCHS_BY_TASK[tasks[m]])))]
        models.append({"model_id": m, "task": tasks[m], "category": category_of[m], "arch": arch,
                       "size": float(sum(ARCHS[arch][0])) ** 0.35 * math.exp(0.25 * rng.standard_normal())})
    sizes = _allocate(n_filters, np.array([x["size"] for x in models]), MIN_MODEL)
    if robust_within:
        _plant_robust(models, robust_within)

    rec_model, rec_depth, rec_norm, rec_n, rec_scale, rec_pt, rec_pc = [], [], [], [], [], [], []
    for mod, n_model in zip(models, sizes):
        layers = np.array(ARCHS[mod["arch"]][0], dtype=float)
        depths = int(min(len(layers), n_model // MIN_RECORD))
        layers = layers[:depths]
        counts = _allocate(int(n_model), layers, MIN_RECORD)
        mod["n_filters"] = int(n_model)
        mod["n_depths"] = depths
        a, b = task_weight[mod["task"]], cat_weight[mod["category"]]
        branch = per_layer and depths >= 3
        n_conv = depths - 1 if branch else depths
        for d, n in enumerate(counts):
            d = min(d, n_conv - 1)
            norm = d / (n_conv - 1) if n_conv > 1 else 0.0
            rec_model.append(mod["model_id"])
            rec_depth.append(d)
            rec_norm.append(norm)
            rec_n.append(int(n))
            rec_scale.append(0.25 * math.exp(-DEPTH_DECAY * norm))
            rec_pt.append(a)
            rec_pc.append(ROBUST_SHARE if mod.get("robust") and mod.get("train") else (1 - a) * b)
    n_rec = np.array(rec_n, dtype=np.int64)
    records = {
        "model_id": np.array(rec_model, dtype=np.int64), "conv_depth": np.array(rec_depth, dtype=np.int64),
        "conv_depth_norm": np.array(rec_norm, dtype=np.float64), "n": n_rec,
        "start": np.concatenate([[0], np.cumsum(n_rec)[:-1]]).astype(np.int64),
        "scale": np.array(rec_scale, dtype=np.float32),
        "p_task": np.array(rec_pt, dtype=np.float64), "p_category": np.array(rec_pc, dtype=np.float64),
        "kind": np.zeros(len(n_rec), dtype=np.int8), "n_zero": np.zeros(len(n_rec), dtype=np.int64),
        "offset": np.zeros(len(n_rec), dtype=np.int64), "base": np.zeros((len(n_rec), 9), dtype=np.float32),
    }
    degenerate = _plant_degenerate(records, rng)
    if entropy_gain:
        _plant_entropy(models, records, entropy_gain)
    segments = _layout(records, np.random.default_rng([seed, 2]), style, shuffle)
    return {"n_filters": n_filters, "models": models, "records": records, "segments": segments,
            "degenerate": degenerate, "task_weight": task_weight, "category_weight": cat_weight,
            "task_order": task_order, "category_order": cat_order, "seed": seed, "per_layer": per_layer,
            "robust_within": robust_within, "entropy_gain": entropy_gain}


def _plant_robust(models: list, dataset: str) -> None:
    """Every natural-image Classification model is trained on ``dataset``; every second of them is robust (its
    records then draw :data:`ROBUST_SHARE` of their filters from the smooth family). The other models keep the
    seeded draws of :func:`_meta` and :func:`_layer_meta`."""
    stratum = [m for m in models if m["task"] == REFERENCE_TASK and m["category"] == REFERENCE_CATEGORY]
    for i, mod in enumerate(stratum):
        mod["train"], mod["robust"] = dataset, i % 2 == 1


def _plant_entropy(models: list, records: dict, gain: float) -> None:
    """Per record, the gain ``g = (1 + gain)^x - 1`` of its model, ``x`` its place between the fewest (0) and the
    most (1) filters on a log scale (geometric, so that the entropy does not level off among the big models):
    :func:`generate_block` multiplies each filter by ``1 + g (k . u)^2`` (:func:`_stretch`)."""
    size = np.log([m["n_filters"] for m in models])
    span = size.max() - size.min()
    for mod, s in zip(models, size):
        mod["gain"] = float((1 + gain) ** ((s - size.min()) / span) - 1) if span > 0 else 0.0
    records["gain"] = np.array([models[m]["gain"] for m in records["model_id"]], dtype=np.float32)


def _plant_degenerate(records: dict, rng) -> list:
    """Mark a few small records as sparse (exact share of zero filters) or near-duplicate; never most records."""
    n = records["n"]
    n_rec = len(n)
    if n_rec < 8:
        return []
    candidates = np.flatnonzero((n >= 20) & (n <= max(20, int(np.median(n)))))
    n_sparse = min(len(SPARSITIES), max(1, n_rec // 50))
    n_dup = min(2, max(1, n_rec // 100))
    chosen = rng.permutation(candidates)[: n_sparse + n_dup]
    planted = []
    for i, r in enumerate(sorted(int(x) for x in chosen)):
        if i < n_sparse:
            share = SPARSITIES[i % len(SPARSITIES)]
            k = int(round(share * n[r]))
            records["kind"][r] = 1
            records["n_zero"][r] = k
            records["offset"][r] = int(rng.integers(n[r]))
            planted.append({"record": r, "kind": "sparse", "n": int(n[r]), "n_zero": k,
                            "sparsity": k / int(n[r])})
        else:
            records["kind"][r] = 2
            proto = _reference_bank(rng, 1)[0] + NOISE * rng.standard_normal(9) / 3
            records["base"][r] = (records["scale"][r] * proto).astype(np.float32)
            planted.append({"record": r, "kind": "near_duplicate", "n": int(n[r]),
                            "relative_noise": DUPLICATE_NOISE})
    kinds = {"sparse": 0, "near_duplicate": 1}
    planted.sort(key=lambda x: (kinds[x["kind"]], x["record"]))
    for entry in planted:
        entry["model_id"] = int(records["model_id"][entry["record"]])
        entry["conv_depth"] = int(records["conv_depth"][entry["record"]])
    return planted


def _layout(records: dict, rng, style: str, shuffle: bool) -> dict:
    """Where each record's filters go in the file, as segments (record, offset in record, length, file start).

    Unshuffled: records one after the other. Shuffled v1.0: the records in a random order, each contiguous.
    Shuffled v0.1: each record cut into up to three runs, the runs randomly interleaved (each record's runs keep
    their order, so sorted ids give the record's filters in order).
    """
    n = records["n"]
    if not shuffle:
        rec = np.arange(len(n))
        off = np.zeros(len(n), dtype=np.int64)
        length = n.copy()
    elif style == "v1.0":
        rec = rng.permutation(len(n))
        off = np.zeros(len(n), dtype=np.int64)
        length = n[rec]
    else:
        rec_l, off_l, len_l, tokens = [], [], [], []
        pieces = {}
        for r, size in enumerate(n):
            k = int(min(3, size, 1 + rng.integers(3)))
            cuts = np.sort(rng.choice(np.arange(1, size), size=k - 1, replace=False)) if k > 1 else []
            bounds = np.concatenate([[0], cuts, [size]]).astype(np.int64)
            pieces[r] = list(zip(bounds[:-1], np.diff(bounds)))
            tokens += [r] * k
        seen = {}
        for r in rng.permutation(np.array(tokens, dtype=np.int64)):
            r = int(r)
            j = seen.get(r, 0)
            seen[r] = j + 1
            rec_l.append(r)
            off_l.append(pieces[r][j][0])
            len_l.append(pieces[r][j][1])
        rec = np.array(rec_l, dtype=np.int64)
        off = np.array(off_l, dtype=np.int64)
        length = np.array(len_l, dtype=np.int64)
    file_start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    canon = records["start"][rec] + off
    order = np.argsort(canon, kind="stable")
    return {"record": rec[order], "offset": off[order], "length": length[order], "file_start": file_start[order],
            "canon_start": canon[order]}


# ---- filters -----------------------------------------------------------------------------------------------

_Y, _X = np.mgrid[-1:2, -1:2].astype(np.float64)


def _unit(k: np.ndarray) -> np.ndarray:
    return k / np.linalg.norm(k, axis=1, keepdims=True)


def _reference_bank(rng, n: int) -> np.ndarray:
    """Trained-looking kernels (unit norm): blobs, first and second Gaussian derivatives, Laplacians of Gaussian."""
    x, y = _X.ravel()[None], _Y.ravel()[None]
    sigma = rng.uniform(0.6, 1.5, (n, 1))
    cx, cy = rng.uniform(-0.4, 0.4, (n, 1)), rng.uniform(-0.4, 0.4, (n, 1))
    theta = rng.uniform(0, 2 * np.pi, (n, 1))
    dx, dy = x - cx, y - cy
    g = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    u = dx * np.cos(theta) + dy * np.sin(theta)
    kinds = rng.choice(4, size=(n, 1), p=[0.2, 0.4, 0.25, 0.15])
    k = np.select([kinds == 0, kinds == 1, kinds == 2],
                  [g, -u * g, (u**2 / sigma**2 - 1) * g], (dx**2 + dy**2 - 2 * sigma**2) * g)
    sign = rng.choice([-1.0, 1.0], size=(n, 1))
    return _unit(k * sign + 1e-6 * rng.standard_normal((n, 9)))


def _category_bank(rng, n: int) -> np.ndarray:
    """Smooth kernels (unit norm): constants and wide blobs."""
    x, y = _X.ravel()[None], _Y.ravel()[None]
    sigma = rng.uniform(1.5, 3.0, (n, 1))
    blob = np.exp(-((x - rng.uniform(-0.5, 0.5, (n, 1)))**2 + (y - rng.uniform(-0.5, 0.5, (n, 1)))**2)
                  / (2 * sigma**2))
    k = np.where(rng.random((n, 1)) < 0.5, np.ones((n, 9)), blob)
    return _unit(k * rng.choice([-1.0, 1.0], size=(n, 1)))


def _banks(seed: int):
    """The kernel banks (float32, built in slices to keep temporaries small) and the log-normal scale table."""
    rng = np.random.default_rng([seed, 1])
    step = 8192
    ref = np.concatenate([_reference_bank(rng, step).astype(np.float32) for _ in range(BANK // step)])
    cat = np.concatenate([_category_bank(rng, step).astype(np.float32) for _ in range(BANK // step)])
    task = rng.standard_normal((BANK, 9), dtype=np.float32) * np.float32(math.sqrt(1 + NOISE**2) / 3)
    noise = rng.standard_normal((BANK, 9), dtype=np.float32) / np.float32(3)
    scales = np.exp(SCALE_SIGMA * rng.standard_normal(BANK)).astype(np.float32)
    return ref, task, cat, noise, scales


def kernels() -> list:
    """(kernel, signature) of the synthesizer's numba kernel as :func:`synthesize` calls it, for
    :func:`filtershift.stats.kernels.precompile` (the demo compiles it while it starts)."""
    from numba import types

    def arr(dtype, ndim=1):
        return types.Array(getattr(types, dtype), ndim, "C")

    f32, i64, f64, m32 = arr("float32"), arr("int64"), arr("float64"), arr("float32", 2)
    signature = (m32, arr("uint64"), types.int64, types.int64, types.int64, i64, i64, f64, f64, f32, arr("int8"),
                 i64, i64, m32, m32, m32, m32, m32, f32, types.float32, types.float32)
    return [(fill_kernel, signature)]


@numba.njit(cache=True, nogil=True)
def fill_kernel(out, raw, q0, rec_lo, rec_hi, start, n, p_task, p_cat, scale, kind, n_zero, offset, base,
                ref, task, cat, noise, scales, noise_level, dup_noise):  # pragma: no cover - compiled
    """Filters of canonical rows [q0, q0 + len(out)) from one 64-bit draw each: two 16-bit bank indices, a
    16-bit component uniform and a 16-bit scale index."""
    q1 = q0 + out.shape[0]
    for r in range(rec_lo, rec_hi):
        lo = max(start[r], q0)
        hi = min(start[r] + n[r], q1)
        t_cut = int(p_task[r] * 65536.0 + 0.5)
        c_cut = t_cut + int(p_cat[r] * 65536.0 + 0.5)
        s = scale[r]
        for q in range(lo, hi):
            i = q - q0
            bits = raw[i]
            a = bits & 0xFFFF
            b = (bits >> 16) & 0xFFFF
            u = (bits >> 32) & 0xFFFF
            v = bits >> 48
            if kind[r] == 1:
                p = (q - start[r] + offset[r]) % n[r]
                if ((p + 1) * n_zero[r]) // n[r] - (p * n_zero[r]) // n[r] == 1:
                    for k in range(9):
                        out[i, k] = 0.0
                    continue
            if kind[r] == 2:
                for k in range(9):
                    out[i, k] = base[r, k] * (1.0 + DUPLICATE_SPREAD * noise[b, 0]) + dup_noise * s * noise[b, k]
                continue
            f = s * scales[v]
            if u < t_cut:
                for k in range(9):
                    out[i, k] = f * task[a, k]
            elif u < c_cut:
                for k in range(9):
                    out[i, k] = f * (cat[a, k] + noise_level * noise[b, k])
            else:
                for k in range(9):
                    out[i, k] = f * (ref[a, k] + noise_level * noise[b, k])


def generate_block(plan: dict, banks, q0: int, q1: int, out: np.ndarray | None = None) -> np.ndarray:
    """Canonical rows [q0, q1) (records in (model_id, conv_depth) order) as float32 (n, 9), into ``out`` if given.

    Rows never straddle a block boundary: [q0, q1) lies within one block of ``BLOCK`` rows."""
    rec = plan["records"]
    block = q0 // BLOCK
    raw = np.random.PCG64(np.random.SeedSequence([plan["seed"], 3, block])).random_raw(BLOCK)
    raw = raw[q0 - block * BLOCK: q1 - block * BLOCK]
    ends = rec["start"] + rec["n"]
    rec_lo = int(np.searchsorted(ends, q0, side="right"))
    rec_hi = int(np.searchsorted(rec["start"], q1, side="left"))
    out = np.empty((q1 - q0, 9), dtype=np.float32) if out is None else out[: q1 - q0]
    fill_kernel(out, raw, q0, rec_lo, rec_hi, rec["start"], rec["n"], rec["p_task"], rec["p_category"], rec["scale"],
          rec["kind"], rec["n_zero"], rec["offset"], rec["base"], *banks, np.float32(NOISE),
          np.float32(DUPLICATE_NOISE))
    if "gain" in rec:
        _stretch(out, q0, rec)
    return out


def _stretch(out: np.ndarray, q0: int, rec: dict) -> None:
    """The planted entropy fall: row ``w`` of record ``r`` becomes ``w (1 + g_r (k . u)^2)``, ``k = w / |w|``, ``u``
    the unit constant kernel (zero rows stay zero), in place. A positive factor per filter: scaled filters, and so
    every drift, are unchanged up to float32 rounding."""
    r = np.searchsorted(rec["start"] + rec["n"], np.arange(q0, q0 + len(out)), side="right")
    norm = np.linalg.norm(out, axis=1)
    cos = out.sum(axis=1) / (3 * np.where(norm > 0, norm, 1))
    out *= (1 + rec["gain"][r] * cos * cos)[:, None]


# ---- writing -----------------------------------------------------------------------------------------------


def _write_h5(path: pathlib.Path, plan: dict, *, style, meta_format, layout, dtype) -> None:
    """The filters, then the meta table: a pandas HDF table ("table"/"fixed"), or its ``to_csv`` text as one
    bytes scalar ("csv", as some v0.1 files hold it)."""
    _write_filters(path, plan, key="filters" if style == "v1.0" else "filter", layout=layout, dtype=dtype)
    meta = _meta(plan, style)
    if meta_format == "csv":
        with h5py.File(path, "a") as h5:
            h5.create_dataset("meta", data=meta.to_csv().encode())
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta.to_hdf(path, key="meta", format=meta_format, mode="a")


def _write_filters(path: pathlib.Path, plan: dict, *, key, layout, dtype) -> None:
    n = plan["n_filters"]
    seg = plan["segments"]
    banks = _banks(plan["seed"])
    shape = (n, 3, 3) if layout == "3x3" else (n, 9)
    with h5py.File(path, "w") as h5, progress.bar(total=n, desc="synth", unit="filter", unit_scale=True) as bar:
        ds = h5.create_dataset(key, shape=shape, dtype=dtype)
        buffer = np.empty((min(BLOCK, n), 9), dtype=np.float32)
        for q0 in range(0, n, BLOCK):
            q1 = min(q0 + BLOCK, n)
            w = generate_block(plan, banks, q0, q1, buffer)
            if dtype != "float32":
                w = w.astype(dtype)
            for a, b, f in _pieces(seg, q0, q1):
                rows = w[a - q0: b - q0]
                ds[f: f + (b - a)] = rows.reshape(-1, 3, 3) if layout == "3x3" else rows
            bar.update(q1 - q0)


def _pieces(seg: dict, q0: int, q1: int):
    """(canonical start, canonical stop, file start) of the runs of [q0, q1), merged where the file is contiguous."""
    ends = seg["canon_start"] + seg["length"]
    lo = int(np.searchsorted(ends, q0, side="right"))
    hi = int(np.searchsorted(seg["canon_start"], q1, side="left"))
    runs = []
    for s in range(lo, hi):
        a = max(q0, int(seg["canon_start"][s]))
        b = min(q1, int(ends[s]))
        f = int(seg["file_start"][s]) + a - int(seg["canon_start"][s])
        if runs and runs[-1][1] == a and runs[-1][2] + (runs[-1][1] - runs[-1][0]) == f:
            runs[-1] = (runs[-1][0], b, runs[-1][2])
        else:
            runs.append((a, b, f))
    return runs


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _meta(plan: dict, style: str) -> pd.DataFrame:
    """The meta table: one row per record, model-level columns repeated on each of the model's rows.

    v0.1 names the visual-category column ``Datatype`` and spells some labels as that release did
    (:data:`V01_CATEGORY_LABELS`: ``formula`` for ``fractals``); everything else is the same as in v1.0."""
    rng = np.random.default_rng([plan["seed"], 4])
    rec, seg = plan["records"], plan["segments"]
    model_rows = {}
    names = set()
    for mod in plan["models"]:
        task, cat, arch = mod["task"], mod["category"], mod["arch"]
        pool = NATURAL_DATASETS[task] if cat == REFERENCE_CATEGORY else CATEGORIES[cat][1]
        train = mod.get("train", pool[int(rng.integers(len(pool)))])
        op_set = int(rng.integers(9, 14))
        model = f"{_slug(arch)}_{_slug(train)}_{op_set}"
        while model in names:
            model += "_b"
        names.add(model)
        labels = TASKS[task][1]
        n3 = mod["n_filters"]
        n1 = int(n3 * rng.uniform(0.05, 0.6)) if arch not in ("VGG-16", "Small-CNN") else 0
        n5 = int(n3 * rng.uniform(0.0, 0.1)) if arch in ("MTCNN", "Pix2Pix-U-Net", "YOLOv3") else 0
        n7 = int(n3 * 0.01) if "ResNet" in arch else 0
        total = n3 + n1 + n5 + n7
        paper = (f"https://arxiv.org/abs/{int(rng.integers(14, 22))}{int(rng.integers(1, 13)):02d}."
                 f"{int(rng.integers(10000)):05d}")
        pretrain = None
        if cat != REFERENCE_CATEGORY or task != REFERENCE_TASK:
            pretrain = ["ImageNet1k", None, None, "COCO"][int(rng.integers(4))]
        ops = ARCHS[arch][1]
        row = {
            "model": model, "producer": PRODUCERS[int(rng.integers(len(PRODUCERS)))], "op_set": op_set,
            "depth": 3 * mod["n_depths"] + int(rng.integers(3, 20)), "Name": arch,
            "Paper": None if rng.random() < 0.3 else paper,
            "Pretraining-Dataset": pretrain, "Training-Dataset": train,
            ("Visual Category" if style == "v1.0" else "Datatype"):
                cat if style == "v1.0" else V01_CATEGORY_LABELS.get(cat, cat),
            "Task": labels[int(rng.integers(len(labels)))],
            "Accessible": f"https://github.com/example-{_slug(arch)}/{model}",
            "Dataset URL": None if cat == REFERENCE_CATEGORY else f"https://data.example.org/{_slug(train)}",
            "total_filters": total, "3x3_filter_share": n3 / total, "(3, 3) filters": n3,
            "(1, 1) filters": n1, "(5, 5) filters": n5,
            **{op: (float(ops[op]) if op in ops else np.nan) for op in OP_COLUMNS},
            EXTRA_COLUMN: None if rng.random() < 0.7 else ["checked", "re-exported", "weights from authors"][
                int(rng.integers(3))],
        }
        model_rows[mod["model_id"]] = row
    by_record = {}
    for p in np.argsort(seg["offset"], kind="stable"):
        by_record.setdefault(int(seg["record"][p]), []).append(int(p))
    ids = []
    for r in range(len(rec["n"])):
        parts = by_record[r]
        if style == "v1.0":
            s = int(seg["file_start"][parts[0]])
            ids.append(f"{s}:{s + int(rec['n'][r]) - 1}")
        else:
            ids.append([i for p in parts
                        for i in range(int(seg["file_start"][p]), int(seg["file_start"][p] + seg["length"][p]))])
    rows = [{"model_id": int(m), "conv_depth": int(d), "conv_depth_norm": float(x), "filter_ids": f,
             **model_rows[int(m)]}
            for m, d, x, f in zip(rec["model_id"], rec["conv_depth"], rec["conv_depth_norm"], ids)]
    df = pd.DataFrame(rows)
    if style == "v1.0":
        df["filter_ids"] = df["filter_ids"].astype("str")
    if plan.get("per_layer"):
        return _layer_meta(plan, df)
    return df.set_index(["model_id", "conv_depth", "conv_depth_norm"])


#: Model columns of ``layer_meta=True`` tables, one of each type: a flag, a float (NaN for models not trained for
#: classification), an integer and a text.
LAYER_META_COLUMNS = {"Robust": "bool", "Top-1 accuracy": "float64", "Epochs": "int64", "Training Regime": "str"}


def _layer_meta(plan: dict, df: pd.DataFrame) -> pd.DataFrame:
    """The meta table one row per layer: index level ``layer_id`` (the layer's place in its model), per-layer
    ``layer_name`` and channels (``in_channels * out_channels / groups`` = the layer's filters, ``groups`` 1), and
    the model columns of :data:`LAYER_META_COLUMNS`."""
    rng = np.random.default_rng([plan["seed"], 5])
    rec = plan["records"]
    extra = {}
    for mod in plan["models"]:
        robust = mod.get("robust", bool(rng.random() < 0.4))
        accuracy = round(float(rng.uniform(55, 85)) - 8 * robust, 2) if mod["task"] == REFERENCE_TASK else np.nan
        extra[mod["model_id"]] = (robust, accuracy, int(rng.integers(30, 300)),
                                  "adversarial" if robust else "standard")
    m = rec["model_id"]
    layer_id = np.arange(len(m)) - np.searchsorted(m, m)
    branch = np.r_[rec["conv_depth"][1:] == rec["conv_depth"][:-1], False] & np.r_[m[1:] == m[:-1], False]
    second = np.r_[False, branch[:-1]]
    df["layer_id"] = layer_id
    df["layer_name"] = [f"features.{d}.conv" + (".a" if b else ".b" if s else "")
                        for d, b, s in zip(rec["conv_depth"], branch, second)]
    out = np.array([_divisor(int(n)) for n in rec["n"]], dtype=np.int64)
    df["in_channels"], df["out_channels"], df["groups"] = rec["n"] // out, out, 1
    for i, (name, kind) in enumerate(LAYER_META_COLUMNS.items()):
        df[name] = pd.Series([extra[int(k)][i] for k in m], dtype=object if kind == "str" else kind)
    return df.set_index(["model_id", "conv_depth", "conv_depth_norm", "layer_id"])


def _divisor(n: int) -> int:
    """The largest divisor of ``n`` not above its square root (a layer's output channels)."""
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)


def _truth(plan: dict, **settings) -> dict:
    rec = plan["records"]
    groups = {"task": {}, "visual_category": {}}
    for mod in plan["models"]:
        for key, label in (("task", mod["task"]), ("visual_category", mod["category"])):
            g = groups[key].setdefault(label, {"n_models": 0, "n_filters": 0})
            g["n_models"] += 1
            g["n_filters"] += mod["n_filters"]
    return {
        "schema": TRUTH_SCHEMA,
        "generator": "filtershift.synth",
        "seed": plan["seed"],
        "n_filters": plan["n_filters"],
        "n_models": len(plan["models"]),
        "n_records": int(len(rec["n"])),
        "settings": settings,
        "shifts": {
            "task": {"column": "Task", "reference": REFERENCE_TASK, "order": plan["task_order"],
                     "mixing_weight": plan["task_weight"], "groups": groups["task"],
                     "family": "isotropic noise kernels",
                     "label_rule": "a Task containing 'Segmentation' is 'Segmentation'"},
            "visual_category": {"column": "Visual Category" if settings["style"] == "v1.0" else "Datatype",
                                **({} if settings["style"] == "v1.0" else {"labels_in_file": {
                                    k: v for k, v in V01_CATEGORY_LABELS.items() if k in groups["visual_category"]}}),
                                "reference": REFERENCE_CATEGORY, "order": plan["category_order"],
                                "mixing_weight": plan["category_weight"], "groups": groups["visual_category"],
                                "family": "constant and wide-blob kernels"},
            "mixture": "P(task family) = a_task; P(category family) = (1 - a_task) * b_category; "
                       "reference family otherwise",
        },
        "depth": {"scale": f"0.25 * exp(-{DEPTH_DECAY} * conv_depth_norm), per filter x lognormal(0, {SCALE_SIGMA})",
                  "order": "filter magnitude decreases with conv_depth_norm"},
        "degenerate": plan["degenerate"],
        **_planted_truth(plan),
    }


def _planted_truth(plan: dict) -> dict:
    """The truth of ``robust_within`` and ``entropy_gain`` (nothing when they are off)."""
    out = {}
    if plan.get("robust_within"):
        stratum = [m for m in plan["models"] if "robust" in m]
        out["robustness"] = {
            "column": "Robust", "stratum_column": "Training-Dataset", "stratum": plan["robust_within"],
            "robust_models": [m["model_id"] for m in stratum if m["robust"]],
            "normal_models": [m["model_id"] for m in stratum if not m["robust"]],
            "share": ROBUST_SHARE, "family": "constant and wide-blob kernels",
            "rule": "robust models trained on the stratum draw `share` of their filters from the family; Robust "
                    "changes no filter elsewhere"}
    if plan.get("entropy_gain"):
        out["entropy"] = {
            "covariate": "model size (its 3x3 filters; total_filters follows it)", "gain": plan["entropy_gain"],
            "sign": -1, "model_gain": {str(m["model_id"]): round(m["gain"], 6) for m in plan["models"]},
            "rule": "each filter x (1 + g (k . u)^2), k its direction, u the unit constant kernel, g = (1 + gain)^x "
                    "- 1, x the model's place from the fewest (0) to the most (1) filters on a log scale; scaled "
                    "filters unchanged"}
    return out


# ---- writing a store directly --------------------------------------------------------------------------------


def _write_store(out: pathlib.Path, plan: dict, truth_text: str, *, style, meta_format, layout, dtype, overwrite,
                 resume) -> None:
    """The store ``convert`` makes of the ``dataset.h5`` that :func:`_write_h5` writes, without that file: the same
    writer (:func:`filtershift.store.convert.write_store`) reads rows generated on demand in the file's order and
    dtype. The source is named by the truth sidecar, which holds every argument (same truth, same data): its name,
    size and SHA-256 go into the provenance and decide whether ``resume`` continues a store."""
    from filtershift.store.convert import write_store

    meta = _meta_as_read(plan, style, meta_format, str(out))
    models, records, runs, reordered = parse_meta(meta, plan["n_filters"], str(out))
    column, relabelled = visual_category(models, str(out))
    source = _Generated(path=str(out), filters_key="filters" if style == "v1.0" else "filter",
                        n_filters=plan["n_filters"], dtype=np.dtype(dtype),
                        row_shape=(3, 3) if layout == "3x3" else (9,), models=models, records=records,
                        reordered=reordered, runs=runs, meta_format=meta_format, category_column=column,
                        relabelled=relabelled, plan=plan)
    data = truth_text.encode()
    sha256 = hashlib.sha256(data).hexdigest()
    identity = {"source": truth_path(out).name, "size": len(data), "sha256": sha256}
    write_store(source, out, identity=identity, sha256=sha256, overwrite=overwrite, resume=resume,
                provenance_kind="synth", desc="synth")


def _meta_as_read(plan: dict, style: str, meta_format: str, path: str) -> pd.DataFrame:
    """The meta table as ``convert`` reads it from the ``dataset.h5``: written to and read back from an HDF5 file
    held in memory (never on disk), or as CSV text parsed by convert's CSV reader, so that whatever the format
    changes on the way (types, missing values, pickled lists) the store's tables are those of a conversion. The
    table is one row per record."""
    meta = _meta(plan, style)
    if meta_format == "csv":
        return parse_csv_meta(meta.to_csv(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pd.HDFStore("meta.h5", mode="w", driver="H5FD_CORE", driver_core_backing_store=0) as h5:
            h5.put("meta", meta, format=meta_format)
            return h5["meta"]


@dataclass
class _Generated(Source):
    """The ``dataset.h5`` source that :func:`_write_h5` would write, its rows generated when read."""

    plan: dict = field(repr=False, default_factory=dict)

    def open(self) -> _FileRows:
        return _FileRows(self.plan)

    def read(self, start: int, stop: int, h5=None) -> np.ndarray:
        """File rows [start, stop) as (n, 9) in the file's dtype (float16 rounds as the file would)."""
        return (h5 or self.open()).read(start, stop).astype(self.dtype, copy=False)


class _FileRows:
    """Rows in file order, generated one canonical block at a time; the last block is kept, since a writer reads
    the file in order and consecutive reads mostly fall in it. Memory: one block, whatever N is."""

    def __init__(self, plan: dict):
        self.plan, self.banks = plan, _banks(plan["seed"])
        seg = plan["segments"]
        order = np.argsort(seg["file_start"], kind="stable")
        self.file_start, self.canon_start = seg["file_start"][order], seg["canon_start"][order]
        self.length = seg["length"][order]
        self.buffer = np.empty((min(BLOCK, plan["n_filters"]), 9), dtype=np.float32)
        self.block, self.rows = -1, self.buffer

    def __enter__(self) -> _FileRows:
        return self

    def __exit__(self, *exc) -> None:
        self.block = -1

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, 9), dtype=np.float32)
        i = int(np.searchsorted(self.file_start, start, side="right")) - 1
        f = start
        while f < stop:
            take = min(stop, int(self.file_start[i] + self.length[i])) - f
            self._canonical(int(self.canon_start[i]) + f - int(self.file_start[i]), out[f - start:f - start + take])
            f += take
            i += 1
        return out

    def _canonical(self, q0: int, dest: np.ndarray) -> None:
        """Canonical rows [q0, q0 + len(dest)) into ``dest``."""
        done = 0
        while done < len(dest):
            q = q0 + done
            b = q // BLOCK
            if b != self.block:
                self.rows = generate_block(self.plan, self.banks, b * BLOCK,
                                           min((b + 1) * BLOCK, self.plan["n_filters"]), self.buffer)
                self.block = b
            take = min(len(dest) - done, (b + 1) * BLOCK - q)
            dest[done:done + take] = self.rows[q - b * BLOCK:q - b * BLOCK + take]
            done += take
