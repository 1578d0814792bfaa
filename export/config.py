"""Typed, validated export options.

Everything a user can get wrong is checked here, once, before any slow step starts, and
raises one :class:`~dymn_edge.errors.ExportError` line. Checks that need the weights (the
class count against ``--labels``) happen in :mod:`dymn_edge.export.api` when the checkpoint is
read.

Window default (decided): 10 s for the 527-class AudioSet checkpoints (what they were trained
and evaluated on), 1 s for any other head (the FSDD reference model is trained on 1 s; a
fine-tuned head should pass ``--window`` explicitly). For ONNX the window is the length used
for calibration and validation; the file itself takes any length.

Output activation (decided): part of the model's contract, never guessed. The 527-class
AudioSet heads are multi-label: ``sigmoid`` by default. Any other head must say
``output_activation="sigmoid"|"softmax"`` (CLI ``--activation``): a 1-of-N classifier exported
as sigmoid shows several classes near 1.0 and turns silence into confident tags, and the
class count alone cannot tell a multi-label head from a 1-of-N one.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from dymn_edge.cliutil import check_input_file, check_writable_folder
from dymn_edge.arch import DynConvStrategy
from dymn_edge.errors import ExportError
from dymn_edge.registry import Arch, get_spec
from dymn_edge.formats import ARGUMENTS, FORMATS, Format, FormatSpec, Precision, format_spec

__all__ = [
    "AUDIOSET_WINDOW_S", "CalibrationConfig", "CalibrationMethod", "DEFAULT_WINDOW_S", "ExportConfig", "Format",
    "Precision", "QuantScheme", "QuantizationConfig",
]

AUDIOSET_WINDOW_S = 10.0
AUDIOSET_CLASSES = 527
ACTIVATIONS = ("sigmoid", "softmax")
DEFAULT_WINDOW_S = 1.0
#: --max-int8-drop default, in points (1 point = 0.01): the README's promise for calibrated
#: int8, held on audio of the calibration folder that calibration did not use
DEFAULT_MAX_INT8_DROP = 0.5
#: held-out clips the int8 check scores at most (250: one clip is 0.4 points)
HELDOUT_CLIPS = 250
MIN_WINDOW_S = 0.32  # 32 frames: the network's total time stride
MAX_WINDOW_S = 60.0
#: Largest --seed: NumPy seeds are 32-bit; a larger one overflowed in the random-init model (a traceback).
MAX_SEED = 2**32 - 1


class QuantScheme(str, enum.Enum):
    """How an int8 file is made."""

    STATIC_QDQ = "static_qdq"  # ONNX Runtime static: QDQ, s8 (7-bit) weights, u8 activations, calibrated
    DYNAMIC = "dynamic"  # ONNX Runtime dynamic / LiteRT dynamic-range: int8 weights, activations quantized on the fly
    WEIGHT_ONLY = "weight_only"  # LiteRT: int8 weights dequantized to float at load; float compute
    FULL_INT8 = "full_int8"  # LiteRT full-integer (NPU); experimental, see quantize.py


class CalibrationMethod(str, enum.Enum):
    """How activation ranges are taken from the calibration set (static schemes only)."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    CLIPWISE = "clipwise"  # per-clip min / max, p5 of the minima and p95 of the maxima (quantize.clipwise_ranges)


@dataclass
class CalibrationConfig:
    """Where int8 calibration audio comes from, how many clips, how ranges are taken.

    ``source`` is a folder: a labelled set that :func:`dymn_edge.datasets.load_dataset`
    recognises with a ``train`` split (its train clips, by the set's own recipe; never the
    test split accuracy is measured on), else every audio file under it. The exporter has no
    default: calibration data is the user's choice and is recorded in the file's metadata.

    Part of the folder is held out: calibration never sees it, and the int8 file is measured
    against fp32 on it (:mod:`dymn_edge.export.calibration` says how the folder is split).
    ``holdout`` names the group (speaker, fold) to hold out instead of the default (the last
    by name); ``heldout_count`` caps the held-out clips (spread evenly over the held-out part).
    """

    source: str | Path
    count: int = 64
    method: CalibrationMethod = CalibrationMethod.CLIPWISE
    holdout: str | None = None
    heldout_count: int = HELDOUT_CLIPS

    def __post_init__(self) -> None:
        self.source = Path(self.source).expanduser()
        if not self.source.is_dir():
            raise ExportError(f"--calibration {self.source}: folder not found")
        self.count = int(self.count)
        if self.count < 1:
            raise ExportError(f"need at least one calibration clip, got {self.count}")
        self.method = _enum(CalibrationMethod, self.method, "calibration method")
        self.heldout_count = int(self.heldout_count)
        if self.heldout_count < 1:
            raise ExportError(f"need at least one held-out clip, got {self.heldout_count}")

    def to_dict(self) -> dict:
        """What the file's metadata records (the folder's name, not the machine's path)."""
        return {"source": self.source.name, "count": self.count, "method": self.method.value}


@dataclass
class QuantizationConfig:
    """One int8 recipe.

    The field defaults describe ONNX static QDQ; :meth:`default_for` gives the measured
    default per format (see quantize.py for the numbers).
    """

    scheme: QuantScheme = QuantScheme.STATIC_QDQ
    weight_type: str = "int8"
    activation_type: str = "uint8"
    per_channel: bool = True  # ordinary convs; the Dy-Conv kernel banks always get per-tensor scales in TFLite
    calibration_method: CalibrationMethod = CalibrationMethod.CLIPWISE
    percentile: float = 99.99
    num_calibration: int = 64
    reduce_range: bool = True  # ONNX static: 7-bit weights; x86's u8 x s8 kernel saturates at 8 bits without VNNI (quantize.py)
    keep_context_float: bool = True  # ONNX static: the pooled context / coefficient path stays float (quantize.context_path_nodes)
    report: bool = False  # ONNX static: write the per-node error report beside the file (--quant-report)

    def __post_init__(self) -> None:
        self.scheme = _enum(QuantScheme, self.scheme, "quantization scheme")
        self.calibration_method = _enum(CalibrationMethod, self.calibration_method,
                                        "calibration method")
        if self.weight_type not in ("int8", "uint8"):
            raise ExportError(f"weight type must be int8 or uint8, got '{self.weight_type}'")
        if self.activation_type not in ("int8", "uint8"):
            raise ExportError(f"activation type must be int8 or uint8, got '{self.activation_type}'")
        if not 90.0 < self.percentile <= 100.0:
            raise ExportError(f"percentile must be in (90, 100], got {self.percentile}")
        if self.num_calibration < 1:
            raise ExportError(f"need at least one calibration clip, got {self.num_calibration}")

    @property
    def needs_calibration(self) -> bool:
        return self.scheme in (QuantScheme.STATIC_QDQ, QuantScheme.FULL_INT8)

    @classmethod
    def default_for(cls, fmt: Format | str, *, calibrated: bool = False) -> "QuantizationConfig":
        """What ``--int8`` gives per format: the fastest int8 variant within the accuracy bound.

        ONNX with calibration audio: static QDQ (FSDD DyMN-S 0.97 = fp32; 10 s fp32/int8 0.82-0.93
        DyMN-M, 0.80-0.85 MN-10, against 0.63 / 0.49 for dynamic); without: dynamic (u8
        weights, no calibration, the smallest file). TFLite: weight-only (float compute in one
        XNNPACK graph, no slower than fp32; full int8 and its hybrid are slower on CPUs). No
        int8 variant is faster than fp32 on an AVX2 CPU without VNNI (README "int8 and NPUs").
        The recipes are the formats table's ``int8_default`` / ``int8_calibrated`` columns.
        """
        spec = format_spec(fmt)
        return cls(**(spec.int8_calibrated if calibrated else spec.int8_default))

    def fallbacks(self) -> list["QuantizationConfig"]:
        """The recipes tried, in order, when this one misses the held-out bound (--max-int8-drop).

        ONNX static QDQ falls back to dynamic (u8 weights, no calibrated ranges: nothing
        calibration picked can be off on other audio). Full-integer int8 has no fallback: every
        other recipe computes in float and takes float input, which an integer-only NPU cannot
        run; it fails instead. Uncalibrated recipes are not measured (no held-out audio).
        """
        if self.scheme is QuantScheme.STATIC_QDQ:
            return [QuantizationConfig(scheme=QuantScheme.DYNAMIC, weight_type="uint8",
                                       per_channel=False, num_calibration=self.num_calibration)]
        return []

    def describe(self) -> str:
        """The human-readable scheme written into the metadata."""
        if self.scheme is QuantScheme.STATIC_QDQ:
            cal = (f"percentile {self.percentile:g}"
                   if self.calibration_method is CalibrationMethod.PERCENTILE
                   else "clipwise p5/p95" if self.calibration_method is CalibrationMethod.CLIPWISE
                   else self.calibration_method.value)
            return (f"int8 static QDQ: {self.weight_type} weights "
                    f"{'per-channel' if self.per_channel else 'per-tensor'}"
                    f"{' (7-bit range)' if self.reduce_range else ''}, "
                    f"{self.activation_type} activations, {cal} calibration"
                    f"{', context path float' if self.keep_context_float else ''}")
        if self.scheme is QuantScheme.DYNAMIC:
            return f"int8 dynamic range: {self.weight_type} weights, activations quantized at run time"
        if self.scheme is QuantScheme.WEIGHT_ONLY:
            return ("int8 weight-only: int8 weights (per-channel convs, per-tensor Dy-Conv kernel "
                    "banks and linear layers), float32 compute")
        from dymn_edge.export.full_int8 import SCHEME  # noqa: PLC0415  (cycle: full_int8 -> validate -> calibration -> config)

        return SCHEME


def _enum(cls: type[enum.Enum], value: object, what: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).strip().lower())
    except ValueError:
        known = ", ".join(m.value for m in cls)  # type: ignore[attr-defined]
        raise ExportError(f"unknown {what} '{value}' (choose from: {known})") from None


@dataclass
class ExportConfig:
    """What to export and how. Strings are accepted for the enum fields and normalised."""

    model: str = "dymn-s"
    weights: str | Path | None = None
    random_init: bool = False
    seed: int = 0
    format: Format = Format.ONNX
    precision: Precision = Precision.FP32
    strategy: str | None = None  # None: the format's measured default
    window_seconds: float | None = None  # None: 10 s for 527-class AudioSet heads, else 1 s
    calibration: CalibrationConfig | str | Path | None = None  # a folder is made a CalibrationConfig
    num_calibration: int | None = None  # None: QuantizationConfig.num_calibration
    labels: str | Path | None = None  # CSV index,display_name[,mid]
    output: str | Path | None = None  # file path (the format's suffix) or existing folder ("dir/")
    validate: bool = True
    output_activation: str | None = None  # None: sigmoid for 527-class AudioSet heads, else required
    eval_dataset: str | Path | None = None  # labelled set for the accuracy check (none: not measured)
    quantization: QuantizationConfig | None = None  # None: QuantizationConfig.default_for(format, calibrated=)
    allow_download: bool = True
    extra: dict = field(default_factory=dict)  # free-form notes carried into the report
    #: Waveform in, probabilities out: the log-mel frontend and the activation in the graph
    #: (dymn_edge.export.waveform); TFLite files also get MediaPipe metadata. fp32 only.
    waveform: bool = False
    #: Calibrated int8: the largest drop (points) allowed on the calibration folder's held-out
    #: part (accuracy; mAP for multi-label sets; top-1 disagreement with fp32 when unlabelled);
    #: None: DEFAULT_MAX_INT8_DROP. Over it the next recipe is tried (QuantizationConfig.fallbacks)
    max_int8_drop: float | None = None
    strict_int8: bool = False  # over the bound: fail (exit 1) instead of falling back

    def __post_init__(self) -> None:
        get_spec(self.model)  # unknown names fail here, with a suggestion
        self.format = format_spec(self.format).format
        self.precision = _enum(Precision, self.precision, "precision")
        spec = self.format_spec
        if not spec.supports(self.precision):
            allowed = ", ".join(p.value for p in spec.precisions)
            raise ExportError(f"{self.format.value} does not support {self.precision.value} "
                              f"(supported: {allowed})")
        if self.random_init and self.weights is not None:
            raise ExportError("--random-init and --weights exclude each other: pick one")
        if not 0 <= int(self.seed) <= MAX_SEED:  # torch / NumPy overflow past it (a traceback)
            raise ExportError(f"--seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.eval_dataset is not None and not self.validate:  # measured by the validation
            raise ExportError("--eval-dataset is measured during validation: leave out --no-validate")
        if self.weights is not None:
            check_input_file(self.weights, "weights file")
        if self.strategy is not None:
            self.strategy = _enum(DynConvStrategy, self.strategy, "dynamic-conv strategy").value
            self._check_fused()
        if self.window_seconds is not None:
            w = float(self.window_seconds)
            if not MIN_WINDOW_S <= w <= MAX_WINDOW_S:
                raise ExportError(f"--window must be between {MIN_WINDOW_S} and {MAX_WINDOW_S} s, got {w:g}")
            self.window_seconds = w
        if self.labels is not None:
            check_input_file(self.labels, "labels file")
        self._check_activation()
        if self.quantization is None:
            self.quantization = QuantizationConfig.default_for(
                self.format, calibrated=self.precision is Precision.INT8 and self.calibration is not None)
        if self.num_calibration is not None:
            if int(self.num_calibration) < 1:
                raise ExportError(f"need at least one calibration clip, got {self.num_calibration}")
            self.quantization.num_calibration = int(self.num_calibration)
        self._check_arguments()
        if self.precision is Precision.INT8:
            self._check_scheme()
        if self.quantization.report and not (self.precision is Precision.INT8
                                             and self.quantization.scheme is QuantScheme.STATIC_QDQ):
            raise ExportError("--quant-report compares a static int8 ONNX file with its float "
                              "graph: use it with --format onnx --static-int8")
        if self.waveform and self.precision is not Precision.FP32:
            raise ExportError(f"--waveform files are fp32 only: {self.precision.value} would also "
                              "round the in-graph frontend's DFT and mel weights, which must stay "
                              "within 1e-4 of the NumPy frontend")
        self._resolve_calibration()
        if ((self.calibration is not None or self.num_calibration is not None)
                and not (self.precision is Precision.INT8 and self.quantization.needs_calibration)):
            what = (f"{self.precision.value}" if self.precision is not Precision.INT8
                    else f"int8 {self.quantization.scheme.value}")
            raise ExportError(f"--calibration / --num-calibration are used only by calibrated int8 "
                              f"(--full-int8, static QDQ); {self.format.value} {what} needs no "
                              "calibration and would ignore them")
        self._check_int8_bound()
        self.output_path(get_spec(self.model).name)  # writable, right suffix: checked before any slow step

    def _check_activation(self) -> None:
        if self.output_activation is not None:
            act = str(self.output_activation).strip().lower()
            if act not in ACTIVATIONS:
                raise ExportError(f"--activation must be sigmoid or softmax, got '{self.output_activation}'")
            self.output_activation = act

    @property
    def int8_bound(self) -> float:
        """The held-out bound in points (--max-int8-drop, else the default)."""
        return DEFAULT_MAX_INT8_DROP if self.max_int8_drop is None else float(self.max_int8_drop)

    def _check_int8_bound(self) -> None:
        if self.max_int8_drop is None and not self.strict_int8:
            return
        if self.calibration is None:
            raise ExportError("--max-int8-drop / --strict bound the int8 file on held-out audio of "
                              "--calibration DIR: use them with calibrated int8 (--int8 --calibration "
                              "DIR, --static-int8, --full-int8)")
        if self.max_int8_drop is not None:
            try:
                bound = float(self.max_int8_drop)
            except (TypeError, ValueError):
                raise ExportError(f"--max-int8-drop must be a number of points, got "
                                  f"'{self.max_int8_drop}'") from None
            if not 0.0 <= bound <= 100.0:
                raise ExportError(f"--max-int8-drop must be between 0 and 100 points, got {bound:g}")
            self.max_int8_drop = bound

    def output_path(self, model_name: str) -> Path:
        """Where the file goes, checked: an existing writable folder, and the format's suffix.

        ``output`` is a file path, or a folder when it already is one or ends in ``/``
        (the file is then ``<model>[-untrained]-<precision><suffix>`` in it); ``None`` is
        the current folder.
        """
        suffix = self.format_spec.suffix
        name = (f"{model_name}{'-untrained' if self.random_init else ''}-{self.precision.value}"
                f"{'-waveform' if self.waveform else ''}{suffix}")
        if self.output is None:
            folder, path = Path.cwd(), Path.cwd() / name
        else:
            text = str(self.output)
            out = Path(text).expanduser()
            if text.endswith(("/", os.sep)) or out.is_dir():
                if not out.is_dir():
                    raise ExportError(f"--output {text}: folder does not exist (create it first)")
                folder, path = out, out / name
            else:
                if out.suffix.lower() != suffix:
                    got = f"suffix '{out.suffix}'" if out.suffix else "no suffix"
                    raise ExportError(f"--output {text}: {got} contradicts --format "
                                      f"{self.format.value}: name the file *{suffix} (or end a "
                                      "folder with /)")
                folder, path = out.parent, out
                if not folder.is_dir():
                    raise ExportError(f"--output {text}: folder {folder} does not exist (create it first)")
        check_writable_folder(folder, f"--output {self.output if self.output is not None else '(current folder)'}",
                              ExportError)
        return path

    def _resolve_calibration(self) -> None:
        """A folder becomes a :class:`CalibrationConfig`; calibrated int8 without one fails now.

        The recipe's count / method and the calibration config's are one: an explicit
        ``CalibrationConfig`` sets the recipe's, a folder takes the recipe's.
        """
        q = self.quantization
        assert q is not None
        cal = self.calibration
        if cal is not None and not isinstance(cal, CalibrationConfig):
            cal = CalibrationConfig(cal, q.num_calibration, q.calibration_method)
        if cal is not None:
            q.num_calibration, q.calibration_method = cal.count, cal.method
        self.calibration = cal
        if self.precision is Precision.INT8 and q.needs_calibration and cal is None:
            flag = "--full-int8" if q.scheme is QuantScheme.FULL_INT8 else f"int8 {q.scheme.value}"
            raise ExportError(f"{flag} needs calibration audio: pass --calibration DIR (a folder "
                              "of audio files like those the model will hear, e.g. its training "
                              "clips)")

    def _check_scheme(self) -> None:
        q = self.quantization
        assert q is not None
        ok = self.format_spec.schemes
        if q.scheme.value not in ok:
            raise ExportError(f"quantization scheme {q.scheme.value} is not available for "
                              f"{self.format.value} (choose from: {', '.join(ok)})")

    def _check_fused(self) -> None:
        """A form the format takes; the fused one is an fp32 log-mel file (OpenVINO operators)."""
        spec = self.format_spec
        if DynConvStrategy(self.strategy) not in spec.strategies:
            takes = ", ".join(s.value for s in spec.strategies)
            raise ExportError(f"{spec.format.value} does not take --strategy {self.strategy} (it takes: "
                              f"{takes}); fused writes ONNX files for OpenVINO with the dymn-edge operators")
        if self.strategy != DynConvStrategy.FUSED.value:
            return
        if get_spec(self.model).arch is Arch.MN:  # before any weights are loaded
            raise ExportError(f"{self.model} has no dynamic blocks: --strategy fused applies to DyMN models")
        if self.precision is not Precision.FP32:
            raise ExportError("--strategy fused files are fp32: the int8 quantizers run the graph in "
                              "ONNX Runtime, which has no kernels for the fused operators")
        if self.waveform:
            raise ExportError("--strategy fused does not take --waveform: export the log-mel "
                              "graph (the runtime computes the frontend)")

    def _arguments_used(self) -> list[str]:
        """The format-dependent arguments (:data:`dymn_edge.formats.ARGUMENTS`) this config sets."""
        q = self.quantization
        assert q is not None
        named = {v.recipe["scheme"]: v.name for spec in FORMATS.values() for v in spec.int8_variants}
        used = {
            "fp16": self.precision is Precision.FP16,
            "int8": self.precision is Precision.INT8,
            named.get(q.scheme.value, ""): self.precision is Precision.INT8,
            "quant_report": q.report,
            "waveform": self.waveform,
            "strategy": self.strategy is not None,
            "calibration": self.calibration is not None,
        }
        return [a for a in ARGUMENTS if used.get(a)]

    def _check_arguments(self) -> None:
        """One check: every format-dependent argument set is one the format's row takes."""
        spec = self.format_spec
        bad = [a for a in self._arguments_used() if a not in spec.arguments]
        if bad:
            takes = ", ".join(f"--{a.replace('_', '-')}" for a in ARGUMENTS if a in spec.arguments)
            raise ExportError(f"{self.format.value} does not take --{bad[0].replace('_', '-')} "
                              f"(it takes: {takes})")

    @property
    def format_spec(self) -> FormatSpec:
        return format_spec(self.format)

    @property
    def validator_engine(self) -> str:
        """The engine that validates the file: the format's, or OpenVINO for the fused form."""
        if self.resolved_strategy == DynConvStrategy.FUSED.value:
            return "openvino"
        return self.format_spec.validator_engine

    @property
    def resolved_strategy(self) -> str:
        """Explicit, else the format's measured default; full-integer int8 takes static_k.

        A full-integer file is for integer-only engines (NPUs, XNNPACK's int8 path), which
        run no depthwise conv whose filter is computed at run time.
        """
        if self.strategy:
            return self.strategy
        q = self.quantization
        if self.precision is Precision.INT8 and q is not None and q.scheme is QuantScheme.FULL_INT8:
            return DynConvStrategy.STATIC_K.value
        return self.format_spec.default_strategy.value

    def activation_for(self, num_classes: int) -> str:
        """The head's activation: explicit, else sigmoid for 527-class AudioSet heads only."""
        if self.output_activation is not None:
            return self.output_activation
        if num_classes == AUDIOSET_CLASSES:
            return "sigmoid"
        raise ExportError(
            f"the checkpoint has a {num_classes}-class head: say how its logits become "
            "probabilities with --activation softmax (one class per clip) or --activation "
            "sigmoid (multi-label); only 527-class AudioSet heads default to sigmoid")

    def window_for(self, num_classes: int) -> float:
        """The export window: explicit, else 10 s for 527-class AudioSet heads, else 1 s."""
        if self.window_seconds is not None:
            return self.window_seconds
        return AUDIOSET_WINDOW_S if num_classes == AUDIOSET_CLASSES else DEFAULT_WINDOW_S
