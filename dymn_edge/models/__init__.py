"""PyTorch models, faithful to the official EfficientAT checkpoints (imports torch).

The names below load on first use, so importing one submodule (``dymn_edge.models.patcher``)
does not build the others; the torch-free architecture data is :mod:`dymn_edge.arch`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DyMN", "MN", "create_model", "load_weights", "resolve_weights"]

_HOME = {"DyMN": "dymn", "MN": "mn", "create_model": "factory", "load_weights": "factory",
         "resolve_weights": "factory"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
