"""The one table of model file formats (Ultralytics-style): adding a format is one row here.

Every consumer asks this table instead of branching on a format: the CLI (precision flags,
their help and the epilog), the export config (precisions, int8 schemes and defaults, the
arguments a format takes), the exporter (writer, quantizer, I/O reader, metadata writer,
default strategy, layout, dynamic axes, tolerances), the file reader (magic bytes, metadata
reader) and the benchmark (every variant worth measuring, the op counter).

The table lives in the torch-free core so that :mod:`dymn_edge.metadata` (and through it the
runtime) reads files through it too. Its function columns are ``module:function`` strings,
imported only when called (:meth:`FormatSpec.call`): the export side needs the export extra,
the table itself imports nothing heavy.
"""

from __future__ import annotations

import difflib
import enum
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dymn_edge.arch import DynConvStrategy, Layout
from dymn_edge.errors import ExportError

__all__ = ["ARGUMENTS", "FORMATS", "Format", "FormatSpec", "Int8Variant", "Precision", "format_of_bytes",
           "format_spec", "int8_variants", "iter_variants"]


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
class Int8Variant:
    """A named int8 recipe of a format: CLI flag ``--<name>``, benchmark variant ``fmt:<name>``."""

    name: str  # "static_int8" -> --static-int8, onnx:static_int8
    recipe: dict[str, Any]  # QuantizationConfig keyword arguments
    help: str


#: Every export argument that depends on the format (Ultralytics' "Arguments" column): a row
#: lists those it takes, and ExportConfig rejects any other with one line. The precision
#: arguments are the precisions and named int8 variants; the others are ExportConfig fields.
ARGUMENTS = ("fp16", "int8", "static_int8", "full_int8", "quant_report", "waveform", "strategy",
             "calibration")


@dataclass(frozen=True)
class FormatSpec:
    """What one format is and how it is written, quantized, described, read and validated.

    Function columns are ``module:function`` names (:meth:`call`), called as:
    ``writer(module, path, io=GraphIO, dynamic_batch=bool)``; ``quantizer(path, precision,
    QuantizationConfig, calibration mels | None, progress=bool, report_path=Path | None)``
    (rewrites ``path``); ``io_reader(path) -> (inputs, outputs)`` as TensorInfo lists;
    ``metadata_writer(path, ModelMetadata)``; ``metadata_reader(path) -> str | bytes | None``
    (the dymn-edge JSON); ``op_counter(path) -> Counter``; ``delegate_report(path) -> list``
    (ops a CPU delegate leaves out, recorded by validation; None: no such report).
    """

    format: Format
    title: str  # how people write it ("TFLite"), in messages
    suffix: str
    magic: Callable[[bytes], bool]  # the first 8 bytes of a file -> is it this format?
    precisions: tuple[Precision, ...]
    writer: str
    quantizer: str
    io_reader: str
    metadata_writer: str
    metadata_reader: str
    op_counter: str
    delegate_report: str | None
    validator_engine: str  # the runtime the file is checked in: "onnxruntime" | "ai-edge-litert"
    default_strategy: DynConvStrategy  # depthwise Dy-Conv form of the DyMN export graph
    layout: Layout  # activation layout of the DyMN export graph
    dynamic_axes: bool  # can the file take any time length (and batch, when the strategy allows)?
    tolerance: dict[str, float]  # absolute tolerance on every output per float precision
    schemes: tuple[str, ...]  # int8 quantization schemes (QuantScheme values)
    int8_default: dict[str, Any]  # --int8 without calibration audio: QuantizationConfig kwargs
    int8_calibrated: dict[str, Any]  # --int8 with --calibration DIR
    int8_variants: tuple[Int8Variant, ...]  # named recipes with their own flag
    arguments: frozenset[str]  # the ARGUMENTS this format takes
    help: dict[str, str] = field(default_factory=dict)  # per precision / variant, for the epilog
    #: --strategy forms the format takes (the fused form is ONNX for OpenVINO only: its
    #: operators exist in no TFLite runtime)
    strategies: tuple[DynConvStrategy, ...] = (
        DynConvStrategy.STATIC_K, DynConvStrategy.RUNTIME_WEIGHT, DynConvStrategy.STRIDE_SPLIT)

    def supports(self, precision: Precision | str) -> bool:
        return Precision(precision) in self.precisions

    def function(self, column: str) -> Callable[..., Any]:
        """The function a ``module:function`` column names (imported now)."""
        module, _, func = getattr(self, column).partition(":")
        return getattr(importlib.import_module(module), func)

    def call(self, column: str, *args: Any, **kwargs: Any) -> Any:
        """Call the function of a column: ``spec.call("io_reader", path)``."""
        return self.function(column)(*args, **kwargs)

    def write_function(self) -> Callable[..., object]:
        """The fp32 writer of this format (imported now: it needs the export extra)."""
        return self.function("writer")

    def variant(self, name: str) -> Int8Variant | None:
        return next((v for v in self.int8_variants if v.name == name), None)


def _is_tflite(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == b"TFL3"  # the flatbuffer file identifier


def _is_onnx(head: bytes) -> bool:
    return head[:1] == b"\x08"  # ModelProto starts with field 1 (ir_version, varint)


_EXPORT = "dymn_edge.export"

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
# int8 defaults (QuantizationConfig.default_for; quantize.py has the numbers): ONNX with
# calibration audio static QDQ, without dynamic (u8 weights, the smallest file); TFLite
# weight-only (float compute in one XNNPACK graph, no slower than fp32).
FORMATS: dict[Format, FormatSpec] = {
    Format.ONNX: FormatSpec(
        Format.ONNX, "ONNX", ".onnx", _is_onnx, (Precision.FP32, Precision.INT8),
        writer=f"{_EXPORT}.onnx_export:export_onnx",
        quantizer=f"{_EXPORT}.quantize:quantize_onnx_file",
        metadata_writer=f"{_EXPORT}.onnx_export:write_metadata",
        metadata_reader="dymn_edge.metadata:read_onnx_metadata",
        delegate_report=None,
        io_reader=f"{_EXPORT}.onnx_export:io_info",
        op_counter=f"{_EXPORT}.onnx_export:count_ops",
        validator_engine="onnxruntime",
        default_strategy=DynConvStrategy.STRIDE_SPLIT, layout=Layout.NCHW, dynamic_axes=True,
        tolerance={"fp32": 1e-3},
        schemes=("static_qdq", "dynamic"),
        int8_default={"scheme": "dynamic", "weight_type": "uint8", "per_channel": False},
        int8_calibrated={"scheme": "static_qdq"},
        int8_variants=(Int8Variant(
            "static_int8", {"scheme": "static_qdq"},
            "static int8 (QDQ, per-channel s8 weights in a 7-bit range, u8 activations calibrated "
            "on --calibration audio; the context / coefficient path stays float)"),),
        arguments=frozenset({"int8", "static_int8", "quant_report", "waveform", "strategy",
                             "calibration"}),
        help={"int8": "with --calibration: static QDQ, u8 activations, 7-bit s8 weights; "
                      "without: ONNX Runtime dynamic, u8 weights, activations quantized at run time"},
        strategies=tuple(DynConvStrategy),
    ),
    Format.TFLITE: FormatSpec(
        Format.TFLITE, "TFLite", ".tflite", _is_tflite, (Precision.FP32, Precision.FP16, Precision.INT8),
        writer=f"{_EXPORT}.tflite_export:export_tflite",
        quantizer=f"{_EXPORT}.quantize:quantize_tflite_file",
        metadata_writer=f"{_EXPORT}.tflite_export:write_metadata",
        metadata_reader="dymn_edge.metadata:read_tflite_metadata",
        delegate_report=f"{_EXPORT}.validate:ops_outside_xnnpack",
        io_reader=f"{_EXPORT}.tflite_export:io_info",
        op_counter=f"{_EXPORT}.tflite_export:count_ops",
        validator_engine="ai-edge-litert",
        default_strategy=DynConvStrategy.RUNTIME_WEIGHT, layout=Layout.NHWC, dynamic_axes=False,
        tolerance={"fp32": 1e-3, "fp16": 5e-2},
        schemes=("weight_only", "dynamic", "full_int8"),
        int8_default={"scheme": "weight_only", "per_channel": True},
        int8_calibrated={"scheme": "weight_only", "per_channel": True},
        int8_variants=(Int8Variant(
            "full_int8", {"scheme": "full_int8", "activation_type": "int8"},
            "full-integer int8 (every op and the I/O int8, calibrated; for integer-only NPUs: "
            "on CPUs it is slower than fp32)"),),
        arguments=frozenset({"fp16", "int8", "full_int8", "waveform", "strategy", "calibration"}),
        help={"fp16": "float16 weights, float32 compute",
              "int8": "weight-only int8; float compute, fully XNNPACK-delegated"},
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


def format_of_bytes(head: bytes) -> FormatSpec | None:
    """The row whose magic matches a file's first bytes (None: no format of the table)."""
    return next((spec for spec in FORMATS.values() if spec.magic(head)), None)


def iter_variants() -> list[tuple[Format, Precision]]:
    """Every (format, precision) pair the exporter can write, in table order (benchmark loop)."""
    return [(spec.format, p) for spec in FORMATS.values() for p in spec.precisions]


def int8_variants() -> dict[str, tuple[FormatSpec, Int8Variant]]:
    """``"onnx:static_int8"`` -> (row, named recipe), for every format (benchmark variants)."""
    return {f"{spec.format.value}:{v.name}": (spec, v) for spec in FORMATS.values()
            for v in spec.int8_variants}
