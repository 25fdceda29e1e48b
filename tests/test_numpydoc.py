"""The public API (``filtershift._API``) has numpydoc docstrings: summary, every parameter, the return value."""

from __future__ import annotations

import importlib
import inspect

import pytest
from numpydoc.validate import validate

import filtershift

# GL08 no docstring, SS01/SS03/SS05 summary line, PR01 undocumented / PR02 unknown / PR07 undescribed parameter,
# RT01 no Returns section, RT03 return without description.
CHECKED = {"GL08", "SS01", "SS03", "SS05", "PR01", "PR02", "PR07", "RT01", "RT03"}


@pytest.mark.parametrize("name", sorted(filtershift._API))
def test_public_docstring_is_numpydoc(name):
    obj = getattr(importlib.import_module(filtershift._API[name]), name)
    checked = CHECKED - {"RT01", "RT03"} if inspect.isclass(obj) else CHECKED
    result = validate(f"{obj.__module__}.{obj.__qualname__}")
    errors = [f"{code}: {message}" for code, message in result["errors"] if code in checked]
    assert not errors, f"{name}: " + "; ".join(errors)
