"""OpenVINO as a runtime engine for ONNX files (the same files ONNX Runtime runs).

OpenVINO reads the exported ONNX file as it is. Its CPU plugin is fastest on a static input
shape: measured on a DyMN-S file (1 thread, thread CPU time), compiling the dynamic-time graph
as is ran 5.0 ms per 1 s window vs 3.2 ms once reshaped to the window's shape (ONNX Runtime:
4.3 ms); at 10 s 19.7 vs 11.3 ms (ONNX Runtime 14.9). So the engine compiles one static copy
per input shape it is given (the tagger feeds one; validation a few), up to ``MAX_SHAPES``;
further shapes run on one dynamic-shape compilation (never a recompilation per call: evicting
and recompiling when five lengths alternate cost 180 ms per call instead of 2). Precision is fp32 unless asked: on a CPU with bf16 / fp16 units OpenVINO's
default would silently compute in them, so ``INFERENCE_PRECISION_HINT`` is always set and
checked on the compiled model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.arch import DynConvStrategy
from dymn_edge.errors import EngineError, MetadataError, one_line
from dymn_edge.metadata import METADATA_KEY, ModelMetadata
from dymn_edge.runtime.engine_base import (
    INT_RANGES, Engine, MissingEngineError, as_float, no_metadata_message, pick_quant, quantize,
)
from dymn_edge.runtime.onnx_props import read_onnx_metadata_props
from dymn_edge.runtime.ops import add_to_core

log = logging.getLogger(__name__)

__all__ = ["OpenVINOEngine", "PIP_OPENVINO", "compile_config"]

PIP_OPENVINO = "pip install 'dymn-edge[openvino]'"

#: OpenVINO's names for the precisions a caller may ask for; "f32" is the default
PRECISIONS = ("f32", "bf16", "f16")


def compile_config(threads: int | None, precision: str = "f32") -> dict[str, Any]:
    """The CPU plugin's settings: latency (one stream), ``threads`` threads, ``precision``."""
    if precision not in PRECISIONS:
        raise EngineError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVINOEngine(Engine):
    """OpenVINO's CPU plugin on an ONNX file, ``threads`` inference threads, fp32."""

    name = "openvino"
    #: static compilations kept; other shapes share one dynamic-shape compilation
    MAX_SHAPES = 4

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str = "f32") -> None:
        p = Path(path)
        try:
            import openvino as ov  # noqa: PLC0415 (optional, heavy)
        except ImportError as exc:
            raise MissingEngineError(f"{p}: the openvino engine needs OpenVINO: {PIP_OPENVINO}") from exc
        raw = read_onnx_metadata_props(p).get(METADATA_KEY)
        if raw is None:
            raise MetadataError(no_metadata_message(p, "onnx"))
        metadata = ModelMetadata.from_json(raw, source=str(p))
        self.config = compile_config(threads, precision)
        self.precision = precision
        self._core = ov.Core()
        if metadata.strategy == DynConvStrategy.FUSED.value:  # the file's dymn.edge operators: our extension
            add_to_core(self._core)
        try:
            self._model = self._core.read_model(str(p))
        except Exception as exc:  # OpenVINO raises RuntimeError / its own types for a bad graph
            raise EngineError(f"{p}: OpenVINO cannot load this file ({one_line(exc)})") from exc
        super().__init__(p, metadata)
        self.threads = threads
        port = self._model.inputs[0]
        self._in_dtype = np.dtype(port.get_element_type().to_dtype()).name
        self._in_q = self._input_quant(None, None) if self._in_dtype in INT_RANGES else None
        if self._in_dtype in INT_RANGES and self._in_q is None:
            raise MetadataError(f"{p}: integer input without scale/zero point in the metadata")
        outs = self._model.outputs
        names = [o.get_any_name() for o in outs]
        shapes = [tuple(d.get_length() if d.is_static else -1 for d in o.get_partial_shape()) for o in outs]
        self._order = self._order_outputs(names, shapes)
        self._out_q = []
        for k, i in enumerate(self._order):
            info = self.metadata.outputs[k] if k < len(self.metadata.outputs) else None
            is_int = np.dtype(outs[i].get_element_type().to_dtype()).name in INT_RANGES
            self._out_q.append(pick_quant(info, None, None) if is_int else None)
        self._compiled: dict[tuple[int, ...], tuple[Any, list[Any]]] = {}
        self._request(self._load_shape())  # a graph OpenVINO cannot compile fails at load

    def _load_shape(self) -> tuple[int, ...]:
        """The shape the tagger will feed: the file's batch (or 1) and window."""
        spec = self.input_spec
        batch = spec.batch or 1
        if spec.waveform:
            return (batch, spec.samples or int(round(self.metadata.window_seconds
                                                     * self.metadata.frontend_config.sample_rate)))
        return (batch, 1, spec.n_mels, spec.frames or self.metadata.window_frames)

    def _request(self, shape: tuple[int, ...]) -> tuple[Any, list[Any]]:
        """(infer request, output ports in (logits, embedding) order) for one input shape."""
        hit = self._compiled.get(shape)
        if hit is not None:
            return hit
        static = len(self._compiled) < self.MAX_SHAPES
        key: tuple[int, ...] = shape if static else ()  # (): the dynamic-shape compilation
        if key in self._compiled:
            return self._compiled[key]
        model = self._model.clone()
        try:
            if static:
                model.reshape({model.inputs[0]: list(shape)})
            compiled = self._core.compile_model(model, "CPU", self.config)
        except Exception as exc:  # RuntimeError from the plugin: an op or shape it cannot take
            raise EngineError(f"{self.path.name}: OpenVINO cannot compile this file for input "
                              f"{shape} ({one_line(exc)})") from exc
        got = compiled.get_property("INFERENCE_PRECISION_HINT")
        got = getattr(got, "get_type_name", lambda: str(got))()  # an ov.Type ("f32")
        if got != self.precision:
            raise EngineError(f"{self.path.name}: OpenVINO compiled for {got}, not {self.precision} as asked")
        entry = (compiled.create_infer_request(), [compiled.outputs[i] for i in self._order])
        self._compiled[key] = entry
        log.debug("%s: OpenVINO compiled for input %s", self.path.name, shape if static else "any shape")
        return entry

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feed = quantize(x, self._in_dtype, *self._in_q) if self._in_q else x
        request, ports = self._request(tuple(int(v) for v in feed.shape))
        try:
            results = request.infer({0: np.ascontiguousarray(feed)})
        except Exception as exc:  # RuntimeError from the plugin
            raise EngineError(f"{self.path.name}: OpenVINO failed on input {x.shape} "
                              f"({one_line(exc)})") from exc
        # copies: the request's output tensors are overwritten by the next call
        logits, emb = (np.array(results[port]) for port in ports)
        return as_float(logits, self._out_q[0]), as_float(emb, self._out_q[1])
