"""The engine interface every runtime engine implements, and what they share.

An engine is a loaded model file: ``run(mel (B, 1, 128, T)) -> (logits (B, C), embedding
(B, E))`` in float32 (a waveform-input file: ``run(wave (B, N)) -> (probabilities,
embedding)``). The input layout, int8 quantization parameters and output order come from the
file's :class:`~dymn_edge.metadata.ModelMetadata`. Kept apart from the engines themselves so
an engine module (ONNX Runtime, LiteRT, OpenVINO) imports only this and its own package.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymn_edge.errors import EngineError
from dymn_edge.frontend import frames_of_samples
from dymn_edge.metadata import ModelMetadata, TensorInfo

__all__ = ["Engine", "InputSpec", "MissingEngineError", "INT_RANGES", "quantize", "dequantize", "pick_quant", "as_float",
           "no_metadata_message"]

class MissingEngineError(EngineError):
    """The engine's package is not installed (the message names the pip command).

    ``auto`` engine selection moves on to the next installed engine for the file."""


INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


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


def quantize(x: np.ndarray, dtype: str, scale: float, zero_point: int) -> np.ndarray:
    lo, hi = INT_RANGES[dtype]
    q = np.round(x / np.float32(scale)) + zero_point
    return np.clip(q, lo, hi).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
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
        self._check_length(x.shape[3], self.input_spec.frames, "frames", "dynamic-time")
        return x

    def _checked_wave(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise EngineError(f"{self.path.name}: this file takes waveforms of shape (B, N), got {x.shape}")
        self._check_length(x.shape[1], self.input_spec.samples, "samples", "dynamic-length")
        return x

    def _check_length(self, got: int, fixed: int | None, unit: str, dynamic: str) -> None:
        """A fixed-window file refuses another length with what to do instead."""
        if fixed is not None and got != fixed:
            raise EngineError(
                f"{self.path.name}: this file was exported for {fixed} {unit} "
                f"({self.metadata.window_seconds:g} s) and got {got}; pad or cut the audio "
                f"to the model window (the tagger does), or export a {dynamic} ONNX file")

    @abc.abstractmethod
    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one batch the graph accepts as is."""

    # -- helpers shared by the engines ------------------------------------------------
    def _input_quant(self, graph_scale: float | None, graph_zp: int | None) -> tuple[float, int] | None:
        info = self.metadata.inputs[0] if self.metadata.inputs else None
        return pick_quant(info, graph_scale, graph_zp)

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


def pick_quant(info: TensorInfo | None, graph_scale: float | None,
                graph_zp: int | None) -> tuple[float, int] | None:
    if info is not None and info.scale is not None:
        return float(info.scale), int(info.zero_point or 0)
    if graph_scale:
        return float(graph_scale), int(graph_zp or 0)
    return None



def as_float(y: np.ndarray, q: tuple[float, int] | None) -> np.ndarray:
    if q is not None and np.issubdtype(y.dtype, np.integer):
        return dequantize(y, *q)
    return np.asarray(y, dtype=np.float32)



def no_metadata_message(path: Path, fmt: str) -> str:
    return (f"{path}: no dymn-edge metadata in this {fmt} file; export it with dymn-export "
            "(files from other tools do not say their labels, frontend and window)")

