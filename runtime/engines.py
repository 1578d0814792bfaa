"""Inference engines: one interface over ONNX Runtime and LiteRT, chosen by file content.

The runtime must run on a Raspberry Pi without torch, with whichever engine the user
installed, so each engine is imported only inside its own class, and a missing one fails
with the pip command that installs it. Everything the runtime needs about the graph
(labels, frontend, window, input layout, int8 quantization parameters) comes from the
file's :class:`~dymn_edge.metadata.ModelMetadata`, never from the file name.

All engines take and return float32: ``run(mel (B, 1, 128, T)) -> (logits (B, C),
embedding (B, E))``; a waveform-input file (``dymn-export --waveform``, metadata
``input_kind`` "waveform") takes ``run(wave (B, N))`` and returns (probabilities (B, C),
embedding (B, E)): its frontend and activation are in the graph. Integer-quantized inputs are quantized and integer outputs
dequantized here, with the scale / zero point from the metadata (falling back to the
graph's own parameters when the metadata leaves them out).
"""

from __future__ import annotations

import abc
import gc
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError, EngineError, MetadataError, one_line
from dymn_edge.frontend import frames_of_samples
from dymn_edge.ort import ort_session
from dymn_edge.native_output import quiet_stderr
from dymn_edge.metadata import METADATA_KEY, ModelMetadata, TensorInfo, detect_format, read_metadata

log = logging.getLogger(__name__)

__all__ = ["Engine", "InputSpec", "OnnxEngine", "LiteRTEngine", "load_engine",
           "PIP_ONNX", "PIP_LITERT"]

PIP_ONNX = "pip install 'dymn-edge[onnx]'"
PIP_LITERT = "pip install 'dymn-edge[litert]'"

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class InputSpec:
    """What an engine accepts: time frames (None = any), batch (None = any), dtype."""

    name: str
    frames: int | None
    batch: int | None
    dtype: str
    n_mels: int
    samples: int | None = None  # waveform input: samples the graph requires (None = any)
    waveform: bool = False

    def describe(self) -> str:
        b = "any" if self.batch is None else str(self.batch)
        if self.waveform:
            n = "any" if self.samples is None else str(self.samples)
            return f"{self.name}: batch {b} x {n} samples ({self.dtype} waveform)"
        t = "any" if self.frames is None else str(self.frames)
        return f"{self.name}: batch {b} x 1 x {self.n_mels} mels x {t} frames ({self.dtype})"


def _quantize(x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    lo, hi = _INT_RANGES[dtype]
    q = np.round(x / np.float32(scale)) + zero_point
    return np.clip(q, lo, hi).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class Engine(abc.ABC):
    """A loaded model file: ``run`` turns log-mels into float32 logits and embeddings."""

    #: short engine name for reports ("onnxruntime", "litert", "tflite_runtime")
    name: str = "engine"

    def __init__(self, path: Path, metadata: ModelMetadata) -> None:
        self.path = path
        self.metadata = metadata
        self.input_spec = self._make_input_spec()

    # -- description ------------------------------------------------------------------
    def _make_input_spec(self) -> InputSpec:
        meta = self.metadata
        if meta.takes_waveform:
            return _waveform_input_spec(meta)
        info = meta.inputs[0] if meta.inputs else TensorInfo("mel", [1, 1, 128, meta.window_frames])
        shape = list(info.shape)
        frames = None if meta.dynamic_time else _static_dim(shape, -1, meta.window_frames)
        batch = None if meta.dynamic_batch else _static_dim(shape, 0, 1)
        n_mels = _static_dim(shape, 2, meta.frontend_config.n_mels)
        return InputSpec(info.name, frames, batch, info.dtype, n_mels)

    @property
    def fixed_frames(self) -> int | None:
        """Time frames the graph requires, or None when it takes any length."""
        return self.input_spec.frames

    def describe(self) -> str:
        """One line for logs and ``--verbose``: engine, file, precision and input layout."""
        m = self.metadata
        return (f"{self.name} | {self.path.name} | {m.model_name} {m.format} {m.precision} | "
                f"{self.input_spec.describe()}")

    # -- running ----------------------------------------------------------------------
    @property
    def takes_waveform(self) -> bool:
        """``run`` takes (B, N) samples and returns probabilities (frontend in the graph)."""
        return self.input_spec.waveform

    @property
    def fixed_samples(self) -> int | None:
        """Waveform files: samples the graph requires, or None when it takes any length."""
        return self.input_spec.samples

    def run(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, C) and embedding (B, E), float32, for ``mel`` (B, 1, n_mels, T).

        Waveform files: probabilities (B, C) and embedding for ``mel`` = samples (B, N).
        """
        x = self._checked_wave(mel) if self.input_spec.waveform else self._checked_mel(mel)
        batch = self.input_spec.batch
        if batch is None or x.shape[0] == batch:
            return self._run_batch(x)
        outs = [self._run_batch(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]))

    def _checked_mel(self, mel: np.ndarray) -> np.ndarray:
        x = np.asarray(mel, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != self.input_spec.n_mels:
            raise EngineError(f"{self.path.name}: expected log-mels of shape (B, 1, "
                              f"{self.input_spec.n_mels}, T), got {x.shape}")
        frames = self.input_spec.frames
        if frames is not None and x.shape[3] != frames:
            raise EngineError(
                f"{self.path.name}: this file was exported for {frames} frames "
                f"({self.metadata.window_seconds:g} s) and got {x.shape[3]}; pad or cut the "
                "audio to the model window (the tagger does), or export a dynamic-time ONNX file")
        return x

    def _checked_wave(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise EngineError(f"{self.path.name}: this file takes waveforms of shape (B, N), got {x.shape}")
        n = self.input_spec.samples
        if n is not None and x.shape[1] != n:
            raise EngineError(
                f"{self.path.name}: this file was exported for {n} samples "
                f"({self.metadata.window_seconds:g} s) and got {x.shape[1]}; pad or cut the audio "
                "to the model window (the tagger does), or export a dynamic-length ONNX file")
        return x

    @abc.abstractmethod
    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch the graph accepts as is."""

    # -- helpers shared by the engines ------------------------------------------------
    def _input_quant(self, graph_scale: float | None, graph_zp: int | None) -> tuple[float, int] | None:
        info = self.metadata.inputs[0] if self.metadata.inputs else None
        return _pick_quant(info, graph_scale, graph_zp)

    def _order_outputs(self, names: list[str], shapes: list[tuple]) -> list[int]:
        """Positions of (logits, embedding) among the graph outputs.

        By metadata name when the names match; else by the class count in the last
        dimension (converters rename outputs, e.g. ``StatefulPartitionedCall:0``).
        """
        want = [t.name for t in self.metadata.outputs[:2]]
        if len(want) == 2 and all(w in names for w in want):
            return [names.index(w) for w in want]
        if len(names) < 2:
            raise EngineError(f"{self.path.name}: graph has {len(names)} output(s); "
                              "a dymn-edge model has two (logits, embedding)")
        c = self.metadata.num_classes
        hits = [i for i, s in enumerate(shapes) if len(s) >= 1 and s[-1] == c]
        if len(hits) == 1:
            other = next(i for i in range(len(names)) if i != hits[0])
            return [hits[0], other]
        return [0, 1]


def _waveform_input_spec(meta: ModelMetadata) -> InputSpec:
    """(B, N) float32 samples; N fixed for TFLite, any for ONNX (``dynamic_time``)."""
    fc = meta.frontend_config
    info = meta.inputs[0] if meta.inputs else TensorInfo("waveform", [1, "samples"])
    shape = list(info.shape)
    samples = None
    if not meta.dynamic_time:
        samples = _static_dim(shape, -1, int(round(meta.window_seconds * fc.sample_rate)))
    batch = None if meta.dynamic_batch else _static_dim(shape, 0, 1)
    frames = None if samples is None else frames_of_samples(samples, fc)
    return InputSpec(info.name, frames, batch, info.dtype, fc.n_mels, samples, True)


def _static_dim(shape: list, axis: int, default: int) -> int:
    try:
        v = shape[axis]
    except IndexError:
        return default
    return v if isinstance(v, int) and v > 0 else default


def _pick_quant(info: TensorInfo | None, graph_scale: float | None,
                graph_zp: int | None) -> tuple[float, int] | None:
    if info is not None and info.scale is not None:
        return float(info.scale), int(info.zero_point or 0)
    if graph_scale:
        return float(graph_scale), int(graph_zp or 0)
    return None


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
            raise EngineError(f"{p}: ONNX files need ONNX Runtime: {PIP_ONNX}") from exc
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise EngineError(f"{p}: ONNX Runtime cannot load this file ({one_line(exc)})") from exc
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise MetadataError(_no_metadata_message(p, "onnx"))
        super().__init__(p, ModelMetadata.from_json(raw, source=str(p)))
        self.threads = threads
        inputs = self.session.get_inputs()
        self._in = inputs[0]
        self._in_dtype = _ort_dtype(self._in.type)
        self._in_q = self._input_quant(None, None) if self._in_dtype in _INT_RANGES else None
        if self._in_dtype in _INT_RANGES and self._in_q is None:
            raise MetadataError(f"{p}: integer input without scale/zero point in the metadata")
        outs = self.session.get_outputs()
        self._out_names = [o.name for o in outs]
        order = self._order_outputs(self._out_names, [tuple(o.shape) for o in outs])
        self._fetch = [self._out_names[i] for i in order]
        self._out_q = []
        for k, i in enumerate(order):
            info = self.metadata.outputs[k] if k < len(self.metadata.outputs) else None
            is_int = _ort_dtype(outs[i].type) in _INT_RANGES
            self._out_q.append(_pick_quant(info, None, None) if is_int else None)

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = _quantize(x, self._in_dtype, *self._in_q) if self._in_q else x
        try:
            logits, emb = self.session.run(self._fetch, {self._in.name: feed})
        except Exception as exc:  # ORT's Fail / InvalidArgument: bad graph for this input
            raise EngineError(f"{self.path.name}: ONNX Runtime failed on input {x.shape} "
                              f"({one_line(exc)})") from exc
        return _as_float(logits, self._out_q[0]), _as_float(emb, self._out_q[1])


def _ort_dtype(type_str: str) -> str:
    return {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
            "tensor(float16)": "float16", "tensor(int16)": "int16"}.get(type_str, type_str)


def _as_float(y: np.ndarray, q: tuple[float, int] | None) -> np.ndarray:
    if q is not None and np.issubdtype(y.dtype, np.integer):
        return _dequantize(y, *q)
    return np.asarray(y, dtype=np.float32)


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
        raise EngineError(f"TFLite files need LiteRT: {PIP_LITERT}") from exc
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
    if opts and lib.strip().lower() in ("xnnpack", "none", "cpu", "builtin"):
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
        if d.lower() in ("none", "cpu", "builtin"):
            try:
                from ai_edge_litert.interpreter import OpResolverType  # noqa: PLC0415
            except ImportError:
                from tflite_runtime.interpreter import OpResolverType  # noqa: PLC0415
            kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        elif d.lower() != "xnnpack":  # XNNPACK is LiteRT's default delegate for CPU
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
        self._in_q = self._input_quant(scale, zp) if self._in_dtype in _INT_RANGES else None
        outs = self.interpreter.get_output_details()
        order = self._order_outputs([o["name"] for o in outs], [tuple(o["shape"]) for o in outs])
        self._outs = [outs[i] for i in order]
        self._out_q = []
        for k, o in enumerate(self._outs):
            info = self.metadata.outputs[k] if k < len(self.metadata.outputs) else None
            is_int = np.dtype(o["dtype"]).name in _INT_RANGES
            s, z = o.get("quantization", (0.0, 0))
            self._out_q.append(_pick_quant(info, s, z) if is_int else None)
        self._shape = tuple(int(v) for v in self._in["shape"])

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if tuple(x.shape) != self._shape:  # dynamic-time / dynamic-batch TFLite graphs
            self.interpreter.resize_tensor_input(self._in["index"], list(x.shape), strict=True)
            self.interpreter.allocate_tensors()
            self._shape = tuple(x.shape)
            self._in = self.interpreter.get_input_details()[0]
            order = {o["name"]: o for o in self.interpreter.get_output_details()}
            self._outs = [order[o["name"]] for o in self._outs]
        feed = _quantize(x, self._in_dtype, *self._in_q) if self._in_q else x
        self.interpreter.set_tensor(self._in["index"], np.ascontiguousarray(feed))
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self._outs[0]["index"])
        emb = self.interpreter.get_tensor(self._outs[1]["index"])
        return _as_float(logits, self._out_q[0]), _as_float(emb, self._out_q[1])


# ---------------------------------------------------------------------------------------


def _no_metadata_message(path: Path, fmt: str) -> str:
    return (f"{path}: no dymn-edge metadata in this {fmt} file; export it with dymn-export "
            "(files from other tools do not say their labels, frontend and window)")


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


def load_engine(path: str | Path, *, threads: int | None = None,
                delegate: str | None = None) -> Engine:
    """Load a model file with the engine its *content* calls for (not its extension).

    Raises MetadataError for unreadable files or files without dymn-edge metadata and
    EngineError when the engine is not installed (with the pip command) or rejects the file.
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
        if fmt == "onnx":
            if delegate:  # accepted and ignored would be a silent surprise
                raise EngineError(f"--delegate applies to TFLite files; {p.name} is an ONNX file "
                                  "(run by ONNX Runtime's CPU provider): leave --delegate out")
            engine: Engine = OnnxEngine(p, threads=threads)
        else:
            engine = LiteRTEngine(p, threads=threads, delegate=delegate)
    except DymnEdgeError:
        raise
    except Exception as exc:  # a corrupt file can fail anywhere in a parser
        raise MetadataError(f"{p}: cannot read this {fmt} file ({one_line(exc)})") from exc
    if engine.metadata.format != fmt:
        log.warning("%s: metadata says %s but the file is %s; trusting the content",
                    p.name, engine.metadata.format, fmt)
    if engine.metadata.untrained:
        log.warning("%s holds an UNTRAINED (random-init) model: its tags mean nothing", p.name)
    log.info("loaded %s", engine.describe())
    return engine
