"""The one table of export formats (Ultralytics-style).

Every consumer asks this table instead of hard-coding a format: the CLI's argument checks
(which precision a format takes), the exporter (which writer, which default strategy, whether
dynamic axes exist) and the benchmark loop (every format x precision worth measuring).
"""

from __future__ import annotations

import difflib
import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dymn_edge.arch import DynConvStrategy, Layout
from dymn_edge.errors import ExportError

__all__ = ["FORMATS", "Format", "FormatSpec", "GraphIO", "Precision", "format_spec", "iter_variants",
           "mel_io"]


class Format(str, enum.Enum):
    """A model file format."""

    ONNX = "onnx"
    TFLITE = "tflite"


class Precision(str, enum.Enum):
    """Numeric precision of the weights (and, for int8, what gets quantized: see quantize.py)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class FormatSpec:
    """What one format is and how it is written, validated and run.

    ``writer`` / ``validator_engine`` are names, not callables, so this table imports nothing
    heavy: ``writer`` is ``module:function`` inside ``dymn_edge.export``, called as
    ``writer(module, path, io=GraphIO, dynamic_batch=bool)`` (:meth:`write_function`).
    """

    format: Format
    suffix: str
    precisions: tuple[Precision, ...]
    writer: str
    validator_engine: str  # the runtime the file is checked in: "onnxruntime" | "ai-edge-litert"
    default_strategy: DynConvStrategy  # depthwise Dy-Conv form of the DyMN export graph
    layout: Layout  # activation layout of the DyMN export graph
    dynamic_axes: bool  # can the file take any time length (and batch, when the strategy allows)?
    tolerance: dict[str, float]  # absolute tolerance on every output per float precision

    def supports(self, precision: Precision | str) -> bool:
        return Precision(precision) in self.precisions

    def write_function(self) -> Callable[..., object]:
        """The fp32 writer of this format (imported now: it needs the export extra)."""
        module, _, func = self.writer.partition(":")
        return getattr(importlib.import_module(f"dymn_edge.export.{module}"), func)


@dataclass(frozen=True)
class GraphIO:
    """The signature an export graph is traced with: names, example shape, free length axis.

    One description for the log-mel graph (:func:`mel_io`) and the waveform graph
    (``dymn_edge.export.waveform.waveform_io``), so both writers and the export-time checks
    serve either.
    """

    input_name: str
    output_names: tuple[str, str]
    example_shape: tuple[int, ...]  # batch 1, the export window
    length_axis: int  # the axis a dynamic-time file leaves free
    length_name: str  # its symbolic name
    length_min: int
    length_max: int
    probe_step: int  # graph rewrites are checked at the window and at window + this (no stride multiple)
    probe_scale: float = 1.0  # standard deviation of the random probe input

    def probe(self, length: int, seed: int = 0) -> np.ndarray:
        """A seeded random input of ``length`` along the free axis (NumPy, float32)."""
        shape = list(self.example_shape)
        shape[self.length_axis] = length
        return (self.probe_scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)

    @property
    def length(self) -> int:
        return self.example_shape[self.length_axis]


def mel_io(frames: int, n_mels: int = 128) -> GraphIO:
    """Log-mel in: ``mel`` (B, 1, n_mels, T); out ``logits`` (B, C), ``embedding`` (B, E)."""
    return GraphIO("mel", ("logits", "embedding"), (1, 1, n_mels, frames), 3, "frames", 32, 100_000, 37)


# Strategy and layout per format, measured per depthwise layer shape of DyMN-M (10 s, batch 1,
# 1 thread, thread CPU time, interleaved, 2-vCPU x86; the issue-8 note has the table):
# - LiteRT runs its NHWC kernels on a channels-last graph with no TRANSPOSE. XNNPACK takes no
#   depthwise conv with a run-time filter, but LiteRT's own kernel runs one faster than the
#   exact static alternative (K static convs + 7 elementwise ops, delegated) at every layer
#   shape (1.3-2.3x), so runtime_weight everywhere (full-integer int8 still takes static_k:
#   ExportConfig.resolved_strategy).
# - ONNX Runtime's Conv is NCHW, so the graph stays NCHW. Its kernel for a run-time filter is
#   generic (no pre-packed depthwise path): at stride 1 it still beats K static convs + mixing,
#   at stride 2 it is 1.3-2.6x slower than them, hence stride_split.
# Tolerances: fp32 sits two orders above the measured float rounding (~1e-5 on logits of a
# trained DyMN-S, 10 s) and far below any real mistake (the fixed-kernel pooling bug gives
# >0.1). fp16 weights move logits by ~1e-2 on trained weights.
FORMATS: dict[Format, FormatSpec] = {
    Format.ONNX: FormatSpec(
        Format.ONNX, ".onnx", (Precision.FP32, Precision.INT8),
        writer="onnx_export:export_onnx", validator_engine="onnxruntime",
        default_strategy=DynConvStrategy.STRIDE_SPLIT, layout=Layout.NCHW, dynamic_axes=True,
        tolerance={"fp32": 1e-3},
    ),
    Format.TFLITE: FormatSpec(
        Format.TFLITE, ".tflite", (Precision.FP32, Precision.FP16, Precision.INT8),
        writer="tflite_export:export_tflite", validator_engine="ai-edge-litert",
        default_strategy=DynConvStrategy.RUNTIME_WEIGHT, layout=Layout.NHWC, dynamic_axes=False,
        tolerance={"fp32": 1e-3, "fp16": 5e-2},
    ),
}


def format_spec(name: Format | str) -> FormatSpec:
    """The table row of ``name``; an unknown format fails with a suggestion."""
    key = name.value if isinstance(name, Format) else str(name).strip().lower().lstrip(".")
    try:
        return FORMATS[Format(key)]
    except ValueError:
        known = [f.value for f in Format]
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.4)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ExportError(f"unknown format '{name}'.{hint} Known formats: {', '.join(known)}") from None


def iter_variants() -> list[tuple[Format, Precision]]:
    """Every (format, precision) pair the exporter can write, in table order (benchmark loop)."""
    return [(spec.format, p) for spec in FORMATS.values() for p in spec.precisions]
