"""Inference engines, one table: which engine runs which file format, chosen by file content.

The runtime must run on a Raspberry Pi without torch, with whichever engine the user
installed, so each engine is imported only inside its own class, and a missing one fails
with the pip command that installs it. Everything the runtime needs about the graph
(labels, frontend, window, input layout, int8 quantization parameters) comes from the
file's :class:`~dymn_edge.metadata.ModelMetadata`, never from the file name.

:data:`ENGINES` has one row per (format, engine): ONNX files run in ONNX Runtime or OpenVINO,
TFLite files in LiteRT. :func:`load_engine` (``dymn-tag``, ``dymn-listen``, archive workers,
benchmarks) and the export's validation (:func:`open_engine`) both read it; adding an engine
is one row. ``engine="auto"`` takes the format's rows in the order of :func:`auto_order`
(a measured rule) and loads the first one installed.

All engines take and return float32: ``run(mel (B, 1, 128, T)) -> (logits (B, C),
embedding (B, E))``; a waveform-input file (``dymn-export --waveform``) takes
``run(wave (B, N))`` and returns (probabilities (B, C), embedding (B, E)). Integer-quantized
inputs are quantized and integer outputs dequantized with the scale / zero point from the
metadata (falling back to the graph's own parameters); see
:mod:`dymn_edge.runtime.engine_base`.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dymn_edge.arch import DynConvStrategy
from dymn_edge.errors import DymnEdgeError, EngineError, MetadataError, UnknownModelError, one_line
from dymn_edge.ort import ort_session
from dymn_edge.native_output import quiet_stderr
from dymn_edge.metadata import METADATA_KEY, ModelMetadata, detect_format, read_metadata
from dymn_edge.registry import Arch, get_spec
from dymn_edge.runtime.engine_base import (
    INT_RANGES, Engine, InputSpec, MissingEngineError, as_float, no_metadata_message, pick_quant, quantize,
)
from dymn_edge.runtime.engine_openvino import PIP_OPENVINO, OpenVINOEngine
from dymn_edge.runtime.onnx_props import read_onnx_metadata_props

log = logging.getLogger(__name__)

__all__ = ["Engine", "InputSpec", "OnnxEngine", "LiteRTEngine", "OpenVINOEngine", "load_engine",
           "open_engine", "EngineSpec", "ENGINES", "ENGINE_CHOICES", "auto_order", "engines_for",
           "PIP_ONNX", "PIP_LITERT", "PIP_OPENVINO", "DELEGATE_ALIASES", "parse_delegate"]

PIP_ONNX = "pip install 'dymn-edge[onnx]'"
PIP_LITERT = "pip install 'dymn-edge[litert]'"

#: LiteRT's built-in delegate names (the one set every check reads): XNNPACK, LiteRT's
#: default CPU delegate, and the plain reference kernels. Anything else is a library.
DELEGATE_ALIASES = {"xnnpack": "xnnpack", "none": "none", "cpu": "none", "builtin": "none"}


# ---------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxEngine(Engine):
    """ONNX Runtime, CPU execution provider, ``threads`` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        p = Path(path)
        try:
            self.session = ort_session(p, threads=threads)
        except ImportError as exc:
            raise MissingEngineError(f"{p}: ONNX files need ONNX Runtime: {PIP_ONNX}") from exc
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise EngineError(f"{p}: ONNX Runtime cannot load this file ({one_line(exc)})") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise MetadataError(no_metadata_message(p, "onnx"))
        super().__init__(p, ModelMetadata.from_json(raw, source=str(p)))
        self.threads = threads
        inputs = self.session.get_inputs()
        self._in = inputs[0]
        self._in_dtype = _ort_dtype(self._in.type)
        self._in_q = self._input_quant(None, None) if self._in_dtype in INT_RANGES else None
        if self._in_dtype in INT_RANGES and self._in_q is None:
            raise MetadataError(f"{p}: integer input without scale/zero point in the metadata")
        outs = self.session.get_outputs()
        self._out_names = [o.name for o in outs]
        order = self._order_outputs(self._out_names, [tuple(o.shape) for o in outs])
        self._fetch = [self._out_names[i] for i in order]
        self._out_q = []
        for k, i in enumerate(order):
            info = self.metadata.outputs[k] if k < len(self.metadata.outputs) else None
            is_int = _ort_dtype(outs[i].type) in INT_RANGES
            self._out_q.append(pick_quant(info, None, None) if is_int else None)

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = quantize(x, self._in_dtype, *self._in_q) if self._in_q else x
        try:
            logits, emb = self.session.run(self._fetch, {self._in.name: feed})
        except Exception as exc:  # ORT's Fail / InvalidArgument: bad graph for this input
            raise EngineError(f"{self.path.name}: ONNX Runtime failed on input {x.shape} "
                              f"({one_line(exc)})") from exc
        return as_float(logits, self._out_q[0]), as_float(emb, self._out_q[1])


def _ort_dtype(type_str: str) -> str:
    return {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
            "tensor(float16)": "float16", "tensor(int16)": "int16"}.get(type_str, type_str)



# ---------------------------------------------------------------------------------------
# LiteRT


def _import_interpreter() -> tuple[Any, Any, str]:
    """(Interpreter class, load_delegate, engine name); tflite_runtime only as a last resort."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate  # noqa: PLC0415

        return Interpreter, load_delegate, "litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate  # noqa: PLC0415
    except ImportError as exc:
        raise MissingEngineError(f"TFLite files need LiteRT: {PIP_LITERT}") from exc
    warnings.warn(
        "using tflite_runtime because ai-edge-litert is not installed; tflite_runtime is "
        f"unmaintained and mis-handles current quantized models: {PIP_LITERT}",
        RuntimeWarning, stacklevel=3)
    return Interpreter, load_delegate, "tflite_runtime"


def parse_delegate(spec: str) -> tuple[str, dict[str, str]]:
    """``LIB[:key=value,...]`` -> (library name or path, options)."""
    lib, opts = spec, {}
    m = re.match(r"^(?P<lib>.+?):(?P<opts>[A-Za-z_][\w.-]*=.*)$", spec)
    if m:
        lib = m.group("lib")
        for item in m.group("opts").split(","):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise EngineError(f"delegate options must be key=value pairs, got '{item}'")
            opts[k.strip()] = v.strip()
    if opts and lib.strip().lower() in DELEGATE_ALIASES:
        raise EngineError(f"the built-in '{lib}' delegate takes no options (threads: --threads); "
                          "options are for a delegate library, e.g. libvx_delegate.so:key=value")
    return lib, opts


class LiteRTEngine(Engine):
    """LiteRT interpreter: XNNPACK by default, ``delegate='none'`` for the plain kernels,
    or any other delegate by library name / path (e.g. an NPU vendor delegate)."""

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 delegate: str | None = None) -> None:
        p = Path(path)
        Interpreter, load_delegate, self.name = _import_interpreter()
        metadata = read_metadata(p)
        kwargs: dict[str, Any] = {"model_path": str(p)}
        if threads:
            kwargs["num_threads"] = int(threads)
        d = (delegate or "xnnpack").strip()
        self.delegate = d
        builtin = DELEGATE_ALIASES.get(d.lower())
        if builtin == "none":
            try:
                from ai_edge_litert.interpreter import OpResolverType  # noqa: PLC0415
            except ImportError:
                from tflite_runtime.interpreter import OpResolverType  # noqa: PLC0415
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif builtin is None:  # XNNPACK is LiteRT's default delegate for CPU
            lib, opts = parse_delegate(d)
            kwargs["experimental_delegates"] = [_load_delegate(load_delegate, lib, opts)]
        try:
            with quiet_stderr():  # LiteRT's "INFO: Created ... XNNPACK delegate" (--verbose: logged)
                self.interpreter = Interpreter(**kwargs)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"{p}: LiteRT cannot load this file ({one_line(exc)})") from exc
        super().__init__(p, metadata)
        self.threads = threads
        self._in = self.interpreter.get_input_details()[0]
        self._in_dtype = np.dtype(self._in["dtype"]).name
        scale, zp = self._in.get("quantization", (0.0, 0))
        self._in_q = self._input_quant(scale, zp) if self._in_dtype in INT_RANGES else None
        outs = self.interpreter.get_output_details()
        order = self._order_outputs([o["name"] for o in outs], [tuple(o["shape"]) for o in outs])
        self._outs = [outs[i] for i in order]
        self._out_q = []
        for k, o in enumerate(self._outs):
            info = self.metadata.outputs[k] if k < len(self.metadata.outputs) else None
            is_int = np.dtype(o["dtype"]).name in INT_RANGES
            s, z = o.get("quantization", (0.0, 0))
            self._out_q.append(pick_quant(info, s, z) if is_int else None)
        self._shape = tuple(int(v) for v in self._in["shape"])

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if tuple(x.shape) != self._shape:  # dynamic-time / dynamic-batch TFLite graphs
            self.interpreter.resize_tensor_input(self._in["index"], list(x.shape), strict=True)
            self.interpreter.allocate_tensors()
            self._shape = tuple(x.shape)
            self._in = self.interpreter.get_input_details()[0]
            order = {o["name"]: o for o in self.interpreter.get_output_details()}
            self._outs = [order[o["name"]] for o in self._outs]
        feed = quantize(x, self._in_dtype, *self._in_q) if self._in_q else x
        self.interpreter.set_tensor(self._in["index"], np.ascontiguousarray(feed))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._outs[0]["index"])
        emb = self.interpreter.get_tensor(self._outs[1]["index"])
        return as_float(logits, self._out_q[0]), as_float(emb, self._out_q[1])


# ---------------------------------------------------------------------------------------


def _load_delegate(load_delegate: Any, lib: str, opts: dict[str, str]) -> Any:
    """A LiteRT delegate library, or one EngineError line.

    A library that fails to load leaves a half-built ``Delegate`` whose ``__del__`` raises
    (LiteRT 2.3: no ``_library`` attribute), which Python would print as an "Exception
    ignored" traceback after our error line: it is collected here with that report muted.
    """
    hook, sys.unraisablehook = sys.unraisablehook, lambda _unraisable: None
    try:
        return load_delegate(lib, opts or None)
    except (ValueError, OSError, RuntimeError) as exc:
        message = f"cannot load LiteRT delegate '{lib}' ({one_line(exc)})"
        del exc  # the traceback holds the half-built Delegate
        gc.collect()
    finally:
        sys.unraisablehook = hook
    raise EngineError(message)


# ---------------------------------------------------------------------------------------
# The engine table


@dataclass(frozen=True)
class EngineSpec:
    """One row: an engine that runs one detected file format."""

    name: str  # the --engine value and Engine.name ("litert" also covers tflite_runtime)
    format: str  # what metadata.detect_format returns for the files it runs
    load: Callable[..., Engine]  # (path, *, threads, delegate) -> Engine
    pip: str  # the install command named when no engine for a file is installed
    delegates: bool = False  # takes --delegate
    validates: bool = False  # the format's validation engine (the export's parity check)
    modules: tuple[str, ...] = ()  # importable packages that provide it (any one suffices)

    @property
    def installed(self) -> bool:
        """Whether one of its packages can be imported (checked without importing it)."""
        return any(importlib.util.find_spec(m) is not None for m in self.modules)


def _load_onnxruntime(path: Path, *, threads: int | None, delegate: str | None) -> Engine:
    return OnnxEngine(path, threads=threads)


def _load_openvino(path: Path, *, threads: int | None, delegate: str | None) -> Engine:
    return OpenVINOEngine(path, threads=threads)


def _load_litert(path: Path, *, threads: int | None, delegate: str | None) -> Engine:
    return LiteRTEngine(path, threads=threads, delegate=delegate)


ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec("onnxruntime", "onnx", _load_onnxruntime, PIP_ONNX, validates=True, modules=("onnxruntime",)),
    EngineSpec("openvino", "onnx", _load_openvino, PIP_OPENVINO, modules=("openvino",)),
    EngineSpec("litert", "tflite", _load_litert, PIP_LITERT, delegates=True, validates=True,
               modules=("ai_edge_litert", "tflite_runtime")),
)

#: ``--engine`` values: auto, then every engine of the table
ENGINE_CHOICES: tuple[str, ...] = ("auto", *dict.fromkeys(e.name for e in ENGINES))


def engines_for(fmt: str) -> list[EngineSpec]:
    """The table's rows for one detected format, in table order."""
    return [e for e in ENGINES if e.format == fmt]


#: ``auto`` for ONNX files, measured (1 thread, thread CPU time, one interleaved run;
#: docs/engines.md): OpenVINO first for float (fp32 / fp16) files of the dynamic models (DyMN
#: 1.2-1.3x faster at 1 s and 10 s) and of static MobileNets from a 10 s window on (below it
#: ONNX Runtime's lower per-call overhead wins: MN-S 1.46 vs 2.14 ms at 1 s, 3.01 vs 3.14 ms at
#: 5 s; at 10 s MN-S 5.67 vs 5.01 ms, MN-10 even); ONNX Runtime first for integer (int8) files
#: (OpenVINO up to 1.6x slower on them).
AUTO_OPENVINO_PRECISIONS = ("fp32", "fp16")
AUTO_OPENVINO_MN_MIN_SECONDS = 10.0


def auto_order(fmt: str, precision: str | None = None, model_name: str | None = None,
               window_seconds: float | None = None, strategy: str | None = None) -> list[EngineSpec]:
    """The rows ``auto`` tries for a file, fastest measured first (then the rest of the table).

    A fused file (``strategy="fused"``) runs in the engines that have its operators only.
    """
    rows = engines_for(fmt)
    if strategy == DynConvStrategy.FUSED.value:
        return [e for e in rows if e.name in FUSED_ENGINES]
    if fmt != "onnx" or precision not in AUTO_OPENVINO_PRECISIONS:
        return rows
    try:
        static = get_spec(model_name or "").arch is Arch.MN
    except UnknownModelError:  # a model the registry does not know: treated as dynamic
        static = False
    if not static or (window_seconds or 0.0) >= AUTO_OPENVINO_MN_MIN_SECONDS:
        rows.sort(key=lambda e: e.name != "openvino")
    return rows


def _file_facts(path: Path, fmt: str) -> tuple[str | None, str | None, float | None, str | None]:
    """(precision, model name, window, strategy) from an ONNX file's metadata, read without an engine."""
    if fmt != "onnx":
        return None, None, None, None
    raw = read_onnx_metadata_props(path).get(METADATA_KEY)
    if raw is None:
        return None, None, None, None
    meta = ModelMetadata.from_json(raw, source=str(path))
    return meta.precision, meta.model_name, meta.window_seconds, meta.strategy


#: the export form whose files use the dymn-edge operators (``dymn_edge/runtime/ops``): only
#: the engines listed run them (ONNX Runtime has no kernels for them)
FUSED_STRATEGY = DynConvStrategy.FUSED.value
FUSED_ENGINES = ("openvino",)


def _fused_rows(path: Path, rows: list[EngineSpec], engine: str | None) -> list[EngineSpec]:
    """The rows that run a fused file; naming another engine is one error line."""
    if engine is not None and engine not in FUSED_ENGINES:
        raise EngineError(f"{path.name} was exported with --strategy fused: its dymn-edge operators "
                          f"run in {' or '.join(FUSED_ENGINES)} only, not {engine} (use --engine "
                          f"{FUSED_ENGINES[0]}, or export without --strategy fused)")
    return [e for e in rows if e.name in FUSED_ENGINES]


def _rows(path: Path, fmt: str, engine: str | None) -> list[EngineSpec]:
    """The rows to try, in order: one named engine, the format's validation engine (None), or auto."""
    rows = engines_for(fmt)
    facts = _file_facts(path, fmt)
    if engine == "auto":
        return auto_order(fmt, *facts)
    if facts[3] == FUSED_STRATEGY and (engine is None or engine in {e.name for e in rows}):
        return _fused_rows(path, rows, engine)
    if engine is None:
        return [e for e in rows if e.validates]
    named = [e for e in rows if e.name == engine]
    if not named:
        if engine not in ENGINE_CHOICES:
            raise EngineError(f"unknown engine '{engine}': choose one of {', '.join(ENGINE_CHOICES)}")
        raise EngineError(f"--engine {engine} does not run {fmt} files; {path.name} is a {fmt} file "
                          f"(engines for it: {', '.join(e.name for e in rows)}, or auto)")
    return named


def open_engine(path: str | Path, *, engine: str | None = "auto", threads: int | None = None,
                delegate: str | None = None) -> Engine:
    """The file in an engine of the table for its detected format, quietly (no load banner).

    ``engine``: a name of :data:`ENGINES`, ``"auto"`` (the first installed of
    :func:`auto_order`), or None (the format's validation engine: ONNX Runtime / LiteRT).
    """
    p = Path(path)
    fmt = detect_format(p)
    rows = _rows(p, fmt, engine)
    if delegate and not any(e.delegates for e in rows):  # accepted and ignored: a silent surprise
        raise EngineError(f"--delegate applies to TFLite files (LiteRT); {p.name} is an {fmt} file "
                          f"(run by {' or '.join(e.name for e in rows)}): leave --delegate out")
    missing: list[MissingEngineError] = []
    for row in rows:
        try:
            return row.load(p, threads=threads, delegate=delegate if row.delegates else None)
        except MissingEngineError as exc:
            missing.append(exc)
    if len(missing) == 1:
        raise missing[0]
    raise MissingEngineError(f"{p}: {fmt.upper()} files need one of {', '.join(e.name for e in rows)}: "
                             + " or ".join(e.pip for e in rows))


def load_engine(path: str | Path, *, threads: int | None = None, delegate: str | None = None,
                engine: str = "auto") -> Engine:
    """Load a model file with an engine its *content* calls for (not its extension).

    ``engine``: "auto" (the fastest installed engine for the file, :func:`auto_order`) or a
    name of :data:`ENGINES`. Raises MetadataError for unreadable files or files without
    dymn-edge metadata and EngineError when no engine for it is installed (with the pip
    command), the named engine does not run this format, or the engine rejects the file.
    """
    p = Path(path)
    if p.is_dir():
        raise MetadataError(f"{p}: is a folder, not a model file")
    if not p.is_file():
        raise MetadataError(f"{p}: model file not found")
    if delegate is not None and not delegate.strip():  # "" would silently mean the default
        raise EngineError("--delegate is empty: give xnnpack, none or a delegate library")
    fmt = detect_format(p)
    try:
        loaded = open_engine(p, engine=engine, threads=threads, delegate=delegate)
    except DymnEdgeError:
        raise
    except Exception as exc:  # a corrupt file can fail anywhere in a parser
        raise MetadataError(f"{p}: cannot read this {fmt} file ({one_line(exc)})") from exc
    if loaded.metadata.format != fmt:
        log.warning("%s: metadata says %s but the file is %s; trusting the content",
                    p.name, loaded.metadata.format, fmt)
    if loaded.metadata.untrained:
        log.warning("%s holds an UNTRAINED (random-init) model: its tags mean nothing", p.name)
    log.info("loaded %s", loaded.describe())
    return loaded
