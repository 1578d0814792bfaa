"""Export DyMN / MN taggers to validated, self-describing ONNX and TFLite files.

Entry points: :func:`dymn_edge.export.api.export_model` (library) and ``dymn-export``
(:mod:`dymn_edge.export.cli`). Nothing heavy is imported here: torch, onnx and litert-torch
load only when an export runs.
"""

from __future__ import annotations

__all__ = ["ExportConfig", "ExportResult", "QuantizationConfig", "export_model"]


def __getattr__(name: str):
    # Lazy re-exports: `from dymn_edge.export import export_model` without importing torch
    # at package import time.
    if name in ("ExportConfig", "QuantizationConfig"):
        from dymn_edge.export import config  # noqa: PLC0415

        return getattr(config, name)
    if name in ("ExportResult", "export_model"):
        from dymn_edge.export import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(name)
