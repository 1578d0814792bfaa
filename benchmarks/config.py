"""What one benchmark run measures: its options, the variants it times and per-model state.

The variant list iterates the formats table (:func:`dymn_edge.formats.iter_variants`, the
named int8 variants), so a new format or precision is benchmarked without touching this
package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dymn_edge.arch import DynConvStrategy
from dymn_edge.cliutil import check_input_file
from dymn_edge.datasets import detect_layout
from dymn_edge.errors import DymnEdgeError
from dymn_edge.formats import format_spec, int8_variants, iter_variants
from dymn_edge.registry import Arch, get_spec, list_models
from dymn_edge.runtime.engines import ENGINES, FUSED_ENGINES

RESULT_SCHEMA = 1
REFERENCE_NAME = "pytorch:fp32"

#: calibrated int8 variants (not in the default set: they need --calibration audio) and their
#: quantization recipe: the formats table's named int8 variants (``onnx:static_int8``,
#: ``tflite:full_int8``); ``onnx:int8`` / ``tflite:int8`` are what ``dymn-export --int8`` gives
CALIBRATED = {name: variant.recipe for name, (_, variant) in int8_variants().items()}


@dataclass
class BenchConfig:
    """What to benchmark and how long to spend."""

    model: str = "dymn-s"  # one registry name or a comma list ("dymn-m,mn-m")
    weights: str | None = None  # a checkpoint for a single model
    random_init: bool = False
    random_init_models: tuple[str, ...] = ()  # these models are random-init in any case
    activation: str | None = None  # exported head; None: the exporter's rule (sigmoid for AudioSet heads)
    formats: list[str] | None = None  # ["onnx:fp32", ...]; None: every variant of the table
    calibration: str | None = None  # audio folder of the calibrated int8 variants (CALIBRATED)
    data: str | None = None  # labelled set for accuracy; None: not measured
    split: str | None = None
    no_accuracy: bool = False
    max_clips: int | None = None
    window_s: float | None = None  # export window; None: the exporter's default (first model's)
    lengths: tuple[float, ...] = (1.0, 10.0)
    threads: tuple[int, ...] = (1, 2)
    budget_s: float = 2.0
    reference: bool = True  # include the eager PyTorch row (one per model)
    workdir: str | None = None  # export cache folder; None: $DYMN_EDGE_CACHE/bench
    cache: bool = True  # False: export again even when the cache holds a matching file
    progress: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [get_spec(m).name for m in str(self.model).split(",") if m.strip()]
        if not names:
            raise DymnEdgeError("--model needs a registry name or a comma list, e.g. dymn-s,mn-s")
        self.model = ",".join(dict.fromkeys(names))
        self.random_init_models = tuple(get_spec(m).name for m in self.random_init_models)
        if self.random_init and self.weights:
            raise DymnEdgeError("--random-init and --weights exclude each other: pick one")
        if self.weights and len(self.trained_models) > 1:
            raise DymnEdgeError("--weights names one checkpoint: use it with one --model (several "
                                "models take --random-init or their released weights)")
        if self.weights:
            check_input_file(self.weights, "weights file")
        if self.activation is not None and self.activation not in ("sigmoid", "softmax"):
            raise DymnEdgeError(f"--activation must be sigmoid or softmax, got '{self.activation}'")
        if not self.lengths or any(x <= 0 for x in self.lengths):
            raise DymnEdgeError("--lengths needs positive seconds, e.g. 1,10")
        if not self.threads or any(t < 1 for t in self.threads):
            raise DymnEdgeError("--threads needs positive counts, e.g. 1,2")
        if self.budget_s <= 0:
            raise DymnEdgeError("--budget must be > 0 seconds")
        self.formats = [normalize_variant(v) for v in self.formats] if self.formats else None
        if self.formats and any(variant_file(v)[0] in CALIBRATED for v in self.formats):
            if not self.calibration:
                raise DymnEdgeError(f"{', '.join(v for v in self.formats if variant_file(v)[0] in CALIBRATED)} "
                                    "need calibration audio: pass --calibration DIR")
            if not Path(self.calibration).expanduser().is_dir():
                raise DymnEdgeError(f"--calibration {self.calibration}: folder not found")

    @property
    def models(self) -> list[str]:
        """Canonical model names of the run, in the order given."""
        return self.model.split(",")

    @property
    def trained_models(self) -> list[str]:
        """The models of the run that are not random-init in any case (``--weights`` is theirs)."""
        return [m for m in self.models if m not in self.random_init_models]


@dataclass
class ModelRun:
    """Per-model state of a run: weights, data, complexity, rows."""

    name: str
    weights: str | None
    random_init: bool
    data_dir: str | None
    activation: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    num_classes: int = 527
    window_s: float = 1.0
    cx: Any = None
    accuracy: dict[str, Any] = field(default_factory=dict)


def static_partner(model: str) -> str | None:
    """The registered static MN of the same width as a dynamic model (dymn-s -> mn-s)."""
    spec = get_spec(model)
    if spec.arch is Arch.MN:
        return None
    return next((n for n in list_models()
                 if get_spec(n).arch is Arch.MN and get_spec(n).width == spec.width), None)


def all_variants() -> list[str]:
    """Every ``format:precision`` of the exporter's table, in table order."""
    return [f"{f.value}:{p.value}" for f, p in iter_variants()]


#: variants named after an engine of the engine table that is not its format's default
#: (``openvino:fp32``: the ``onnx:fp32`` file run by OpenVINO), and the format they run
ENGINE_VARIANTS = {e.name: e.format for e in ENGINES if not e.validates}


def variant_file(variant: str) -> tuple[str, str]:
    """(the file's format:precision, the engine that runs the row) of a normalized variant.

    ``onnx:fp32`` -> (``onnx:fp32``, onnxruntime); ``openvino:fp32`` -> (``onnx:fp32``, openvino).
    """
    head, _, prec = variant.partition(":")
    if head in ENGINE_VARIANTS:
        return f"{ENGINE_VARIANTS[head]}:{prec}", head
    return variant, next(e.name for e in ENGINES if e.format == head and e.validates)


#: the pseudo-precision of fused-form rows (``openvino:fused``: the fp32 ONNX file exported
#: with ``--strategy fused``, timed in OpenVINO with the dymn-edge operators)
FUSED = DynConvStrategy.FUSED.value


def variant_applies(model: str, variant: str) -> bool:
    """Whether ``model`` has a file for ``variant`` (fused rows: dynamic models only)."""
    return variant.partition(":")[2] != FUSED or get_spec(model).arch is not Arch.MN


def normalize_variant(text: str) -> str:
    """``ONNX:FP32`` / ``tflite`` -> ``onnx:fp32`` / ``tflite:fp32``; checked against the table.

    An engine name (``openvino:fp32``) is a row of the format it runs, timed in that engine.
    """
    fmt, _, prec = text.strip().lower().partition(":")
    if prec == FUSED:  # the fp32 ONNX file in the fused form: only its engines run it
        if fmt not in FUSED_ENGINES:
            raise DymnEdgeError(f"{fmt}:{FUSED} is no row: fused ONNX files run in "
                                f"{' or '.join(FUSED_ENGINES)} only ({FUSED_ENGINES[0]}:{FUSED})")
        return f"{fmt}:{FUSED}"
    if fmt in ENGINE_VARIANTS:
        if (prec or "fp32") == "waveform":
            raise DymnEdgeError(f"{fmt} rows take the model files (fp32, fp16, int8), not waveform ones")
        return f"{fmt}:{normalize_variant(f'{ENGINE_VARIANTS[fmt]}:{prec}').partition(':')[2]}"
    spec = format_spec(fmt)
    prec = prec or "fp32"
    if prec == "waveform":  # fp32 with the frontend in the graph (dymn-export --waveform)
        return f"{spec.format.value}:waveform"
    if f"{spec.format.value}:{prec}" in CALIBRATED:
        return f"{spec.format.value}:{prec}"
    if prec not in [p.value for p in spec.precisions]:
        allowed = ", ".join(p.value for p in spec.precisions)
        raise DymnEdgeError(f"{spec.format.value} does not support {prec} (supported: {allowed})")
    return f"{spec.format.value}:{prec}"


def eval_split(data_dir: str | Path, split: str | None) -> str | None:
    """The split scored when none is asked for: the layout's own (FSDD's test split, never its
    train clips), from the same detection that loads the folder."""
    if split is not None:
        return split
    found = detect_layout(data_dir)
    return found[0].eval_split if found else None
