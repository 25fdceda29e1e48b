"""Readers that turn a source (dataset.h5, an ONNX/PyTorch/safetensors model) into filters."""

from __future__ import annotations

import importlib
import os

from filtershift.errors import InputError

#: The model formats: file suffix -> (format name, reader module, reader function taking the path). A new format
#: is a reader module in this package (returning a ``ModelFilters``) and its rows here.
READERS = {
    ".onnx": ("onnx", "filtershift.ingest.onnx", "read_onnx"),
    ".pt": ("torch", "filtershift.ingest.torch", "read_state_dict"),
    ".pth": ("torch", "filtershift.ingest.torch", "read_state_dict"),
    ".bin": ("torch", "filtershift.ingest.torch", "read_state_dict"),
    ".ckpt": ("torch", "filtershift.ingest.torch", "read_state_dict"),
    ".safetensors": ("safetensors", "filtershift.ingest.torch", "read_safetensors"),
}
#: Model file suffix -> format name.
MODEL_SUFFIXES = {suffix: reader[0] for suffix, reader in READERS.items()}


def read_model(source, **kwargs):
    """Extract the 3x3 filters of one model: a file path (.onnx, .pt/.pth/.bin/.ckpt state_dict,
    .safetensors) or a ``torch.nn.Module``; returns a ``ModelFilters``."""
    if not isinstance(source, (str, os.PathLike)):
        from filtershift.ingest.torch import read_module

        return read_module(source, **kwargs)
    path = os.fspath(source)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in READERS:
        raise InputError(f"{path}: unknown model format {suffix!r}; filtershift reads "
                         f"{sorted(MODEL_SUFFIXES)} files.")
    _, module, function = READERS[suffix]
    return getattr(importlib.import_module(module), function)(path, **kwargs)
