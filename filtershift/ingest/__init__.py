"""Readers that turn a source (dataset.h5, an ONNX/PyTorch/safetensors model) into filters."""

from __future__ import annotations

import os

from filtershift.errors import InputError

MODEL_SUFFIXES = {".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".bin": "torch", ".ckpt": "torch",
                  ".safetensors": "safetensors"}


def read_model(source, **kwargs):
    """Extract the 3x3 filters of one model: a file path (.onnx, .pt/.pth/.bin/.ckpt state_dict,
    .safetensors) or a ``torch.nn.Module``; returns a ``ModelFilters``."""
    if not isinstance(source, (str, os.PathLike)):
        from filtershift.ingest.torch import read_module

        return read_module(source, **kwargs)
    path = os.fspath(source)
    suffix = os.path.splitext(path)[1].lower()
    kind = MODEL_SUFFIXES.get(suffix)
    if kind is None:
        raise InputError(f"{path}: unknown model format {suffix!r}; filtershift reads "
                         f"{sorted(MODEL_SUFFIXES)} files.")
    if kind == "onnx":
        from filtershift.ingest.onnx import read_onnx

        return read_onnx(path, **kwargs)
    if kind == "safetensors":
        from filtershift.ingest.torch import read_safetensors

        return read_safetensors(path, **kwargs)
    from filtershift.ingest.torch import read_state_dict

    return read_state_dict(path, **kwargs)
