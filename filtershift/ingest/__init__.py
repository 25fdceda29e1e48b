"""Readers that turn a source (dataset.h5, an ONNX/PyTorch/safetensors model) into filters.

A model format is declared once, in its reader module: a module-level literal
``FORMATS = {suffix: (format name, reader function name)}`` next to the reader function (which takes the path and
returns a :class:`~filtershift.ingest.model.ModelFilters`). :func:`formats` finds the declarations by reading the
modules of this package as text, so that listing the formats imports no reader and none of their optional packages
(torch, onnx); :func:`read_model` imports the one reader a file needs.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os

from filtershift.errors import InputError


def _declared(path: str) -> dict:
    """The ``FORMATS`` literal of one module (empty when it declares none): the statement that starts with
    ``FORMATS =`` at the left margin, parsed alone (parsing the whole module would cost more than the rest of
    a small command's start)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(("FORMATS =", "FORMATS:"))), None)
    if start is None:
        return {}
    for stop in range(start + 1, len(lines) + 1):
        try:
            statement = ast.parse("\n".join(lines[start:stop])).body[0]
        except SyntaxError:
            continue
        return ast.literal_eval(statement.value)
    raise RuntimeError(f"{path}: FORMATS is not a literal dict of suffix -> (format name, reader function).")


@functools.cache
def _discover(folders: tuple) -> dict:
    found = {}
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not entry.name.endswith(".py") or entry.name.startswith("_"):
                continue
            module = f"{__name__}.{entry.name[:-3]}"
            for suffix, (name, function) in _declared(entry.path).items():
                suffix = suffix.lower()
                if suffix in found:
                    raise RuntimeError(f"model suffix {suffix!r} is declared by both {found[suffix][1]} and "
                                       f"{module}; give each format its own suffixes.")
                found[suffix] = (name, module, function)
    return found


def formats() -> dict:
    """The model formats declared by this package's reader modules.

    Returns
    -------
    dict
        File suffix (lower case, with the dot) -> (format name, reader module, reader function name).
    """
    return dict(_discover(tuple(__path__)))


def format_of(path) -> tuple:
    """The format of a model file, from its suffix: (format name, reader module, reader function name); raises
    ``InputError``, naming the suffixes filtershift reads, for an unknown one."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    table = formats()
    if suffix not in table:
        raise InputError(f"{path}: unknown model format {suffix!r}; filtershift reads {sorted(table)} files.")
    return table[suffix]


def __getattr__(name: str):
    """``READERS`` (suffix -> (name, module, function)) and ``MODEL_SUFFIXES`` (suffix -> name), computed from the
    declarations on first use."""
    if name == "READERS":
        return formats()
    if name == "MODEL_SUFFIXES":
        return {suffix: reader[0] for suffix, reader in formats().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_model(source, **kwargs):
    """Extract the 3x3 filters of one model: a file path or a ``torch.nn.Module``.

    File paths: .onnx, .pt/.pth/.bin/.ckpt state_dict (loaded with ``weights_only=True``), .safetensors; the
    format is chosen by the suffix (:func:`formats`).

    Parameters
    ----------
    source : str, os.PathLike or torch.nn.Module
        The model file, or a module.
    **kwargs
        Passed to the format's reader: ``module`` (the ``nn.Module`` the weights of a state_dict or safetensors
        file belong to, for exact depths and groups); for a module, ``name`` (the result's ``source``) and
        ``trace``.

    Returns
    -------
    ModelFilters
        The model's 3x3 filters per layer, sorted by (conv depth, position in the graph), with ``source``,
        ``kind``, ``sha256`` and the ``meta`` row that joins the models table.

    Raises
    ------
    filtershift.errors.InputError
        If the suffix is unknown, the file is missing, corrupt or unsafe, or its reader's extra is not installed.
    """
    if not isinstance(source, (str, os.PathLike)):
        from filtershift.ingest.torch import read_module

        return read_module(source, **kwargs)
    path = os.fspath(source)
    _, module, function = format_of(path)
    return getattr(importlib.import_module(module), function)(path, **kwargs)
