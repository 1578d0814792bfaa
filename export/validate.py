"""Validation after every export (Optimum-style): the file as users run it vs PyTorch.

- Parity: the written file is loaded through :mod:`dymn_edge.runtime.engines` (the engines
  ``dymn-tag`` / ``dymn-listen`` use: their input quantization, output ordering and
  dequantization are what is validated) and fed log-mels of the package's parity clip at more
  than one input: for dynamic-time ONNX the export window plus other lengths (one not a
  multiple of the network's stride, so a baked-in pooling kernel cannot pass); for
  fixed-shape TFLite two different segments. PyTorch is the independent oracle. Every
  output's name, shape and max abs difference is reported; fp32 / fp16 must meet their
  tolerance.
- int8 is judged by agreement on a trained model: on a labelled set (``eval_dataset``) the
  accuracy of reference and file, top-1 agreement and max probability difference, both
  through the runtime's audio path. A drop above ``max_accuracy_drop`` fails.
- The parity reference is PyTorch in float64. Each case's conditioning is measured first:
  the envelope is the largest distance to float64 of PyTorch fp32 on the input and on
  ``PERTURBATIONS`` copies perturbed at fp32 rounding level (one sample of fp32's error is no
  measure of what another correct summation order gives). A well-conditioned case (envelope
  within ``ILL_CONDITIONED`` of ``max(1, |output|)``) is judged strictly: the file may differ
  from float64 by the format's tolerance (fp16: relative to the output's largest magnitude
  above 1, since fp16 weights move every output by a fraction of its size) plus
  ``RELATIVE_FACTOR`` x the envelope (fp32: at least ``MIN_ENVELOPE`` relative; fp16:
  x ``FP16_AMPLIFICATION``). An ill-conditioned
  case (a random-weight checkpoint driven far out of its domain by loud speech: logits of
  1e5-1e10, fp32 itself up to 12 % off) is reported with its numbers and does not fail the
  file; the same audio at lower gain, then
  under seeded noise (``LEVELS``), stands in for it until one version is well-conditioned.
  When no case is, a warning says so and the report carries it.
- Any failure raises ONE :class:`~dymn_edge.errors.ValidationError` listing everything.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from dymn_edge.datasets import load_dataset
from dymn_edge.errors import DymnEdgeError, one_line
from dymn_edge.audio import fit_to_length
from dymn_edge.export.calibration import to_mel, validation_waves
from dymn_edge.frontend import frames_for_seconds
from dymn_edge.metrics import (
    accuracy, max_prob_diff, mean_average_precision, topk_overlap,
)
from dymn_edge.runtime.engines import Engine, open_engine
from dymn_edge.runtime.tagger import Tagger

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

#: PyTorch reference batches: bounded memory for long windows
TORCH_BATCH = 50


# --------------------------------------------------------------------------------------------
# The file (through the runtime) and the PyTorch oracle


def load_file(path: str | Path, threads: int = 1, engine: str | None = None) -> Engine:
    """The written file in a runtime engine of the engine table (quietly: no load banner).

    ``engine``: None, the format's validation engine (ONNX Runtime / LiteRT); a name of
    :data:`dymn_edge.runtime.engines.ENGINES` (e.g. "openvino"), or "auto" as ``dymn-tag``.
    """
    return open_engine(Path(path), engine=engine, threads=threads)


def make_runner(path: str | Path, threads: int = 1, engine: str | None = None) -> Runner:
    """``runner(mel) -> (logits, embedding)`` of the file, as the runtime runs it."""
    return load_file(path, threads, engine).run


def torch_runner(model, dtype: type = np.float32) -> Runner:
    """PyTorch as a NumPy runner (``float64``: a double copy of ``model``, left untouched).

    The one PyTorch runner of the project: the exporter's parity oracle and the benchmark's
    accuracy reference.
    """
    import torch  # noqa: PLC0415 (the export extra)

    if dtype is np.float64:
        model = copy.deepcopy(model).double()
    model = model.eval()

    def run(mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(mel, dtype=dtype)
        with torch.inference_mode():
            outs = [model(torch.from_numpy(x[i:i + TORCH_BATCH])) for i in range(0, len(x), TORCH_BATCH)]
        return (np.concatenate([o[0].numpy() for o in outs]),
                np.concatenate([o[1].numpy() for o in outs]))

    return run


def torch64_runner(model) -> Runner:
    """The PyTorch reference in float64: the closest thing to the model's exact outputs.

    Judging a file against PyTorch fp32 mixes the file's error with fp32's own rounding,
    which on an ill-conditioned input (a loop discontinuity, large activations) can reach
    0.2 on its own; against float64 the file's error is measured alone.
    """
    return torch_runner(model, np.float64)


#: A file may be this many times further from float64 than PyTorch fp32's envelope, plus the floor.
RELATIVE_FACTOR = 3.0
#: fp16 weights perturb every weight at fp16 rounding level (2**-11), 2**13 x fp32's: an input
#: whose fp32 envelope is e moves by up to ~2**13 e under them (a random-weight DyMN-S: 0.105
#: on an embedding whose fp32 envelope is 1.5e-5, a ratio of 7000).
FP16_AMPLIFICATION = 2.0 ** 13
#: Inputs perturbed at fp32 rounding level (relative 2**-23, seeded) in a case's fp32 envelope.
PERTURBATIONS = 2
#: Relative fp32 error (envelope / max(1, |output|)) above which a case is ill-conditioned:
#: a trained checkpoint sits near 1e-6 (the FSDD digit model: <= 3e-6 on every parity case,
#: its 1e3-sized logits included); a random-weight DyMN-S driven out of its domain by speech
#: reaches 7e-5 to 0.9, where a correct export form lands up to 3.6 x one fp32 sample away.
ILL_CONDITIONED = 3e-5
#: fp32 files: the envelope counts as at least this x max(1, |output|), so a well-conditioned
#: case allows ILL_CONDITIONED relative (a random-weight DyMN-M with logits of 7e18, fp32 5e-6
#: relative off: its correct ONNX file is 3.1 x the 2-copy envelope away from float64).
MIN_ENVELOPE = ILL_CONDITIONED / RELATIVE_FACTOR
#: Versions of an ill-conditioned case's audio tried in order, as (gain, noise): the segment
#: times ``gain`` plus seeded white noise of ``noise`` x the segment's RMS (a broadband floor
#: brings a model whose statistics come from dense audio back into its range).
LEVELS = ((0.1, 0.0), (0.01, 0.0), (0.1, 0.3), (0.1, 1.0))


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class OutputCheck:
    case: str
    name: str
    shape: list[int]
    max_abs_diff: float  # file vs the reference (float64 PyTorch when given)
    tolerance: float | None  # the floor (fp16: per unit of output scale)
    ok: bool
    fp32_diff: float | None = None  # PyTorch fp32 vs float64 on the input itself
    allowed: float | None = None  # floor + RELATIVE_FACTOR * fp32_envelope
    scale: float | None = None  # max |reference output|
    fp32_envelope: float | None = None  # max over the input and its perturbed copies
    relative_fp32_error: float | None = None  # fp32_envelope / max(1, scale): the conditioning
    ill_conditioned: bool = False  # reported, not judged (ok says whether it met allowed)


@dataclass
class ValidationReport:
    """Everything validation measured; ``summary()`` goes into the file's metadata."""

    engine: str
    audio: str
    precision: str
    checks: list[OutputCheck] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # int8 / dataset agreement, when measured
    xnnpack_ops_outside: list[str] | None = None  # TFLite: ops XNNPACK did not take
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.errors

    def _judged(self) -> list[OutputCheck]:
        """The checks that decide (well-conditioned); all of them when none is."""
        judged = [c for c in self.checks if not c.ill_conditioned]
        return judged or self.checks

    @property
    def max_abs_diff(self) -> float:
        """Largest difference on the judged checks (ill-conditioned ones: ``ill_conditioned``)."""
        return max((c.max_abs_diff for c in self._judged()), default=math.nan)

    @property
    def fp32_reference_diff(self) -> float | None:
        diffs = [c.fp32_diff for c in self._judged() if c.fp32_diff is not None]
        return max(diffs) if diffs else None

    @property
    def ill_conditioned(self) -> list[dict]:
        """The checks reported but not judged, with the numbers that say why."""
        return [{"case": c.case, "output": c.name, "relative_fp32_error": c.relative_fp32_error,
                 "max_abs_diff": c.max_abs_diff, "allowed": c.allowed, "scale": c.scale}
                for c in self.checks if c.ill_conditioned]

    @property
    def judged_cases(self) -> int:
        """Cases whose every output was judged strictly (well-conditioned)."""
        return len({c.case for c in self.checks} - {c.case for c in self.checks if c.ill_conditioned})

    def summary(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["max_abs_diff"] = self.max_abs_diff
        d["fp32_reference_diff"] = self.fp32_reference_diff
        if self.fp32_reference_diff is not None:
            d["reference"] = (f"PyTorch float64; allowed = tolerance (fp16: x max(1, max |output|)) + "
                              f"{RELATIVE_FACTOR:g} x (fp16: x 2^13) PyTorch fp32's envelope (its largest distance "
                              f"to float64 on the input and {PERTURBATIONS} copies perturbed at fp32 "
                              f"rounding level; fp32: at least {MIN_ENVELOPE:.2g} x max(1, |output|)); "
                              f"a case whose envelope exceeds {ILL_CONDITIONED:g} x "
                              "max(1, |output|) is ill-conditioned: reported, not judged")
            d["ill_conditioned"] = self.ill_conditioned
            d["judged_cases"] = self.judged_cases
        return d


def parity_cases(window_seconds: float, fc, dynamic_time: bool, waveform_samples: int | None = None,
                 level: tuple[float, float] = (1.0, 0.0)) -> tuple[list[tuple[str, np.ndarray]], str]:
    """(label, input) parity cases of real audio, and where the audio came from.

    Fixed-shape files: two different windows. Dynamic-time files: the window, a length that
    is no multiple of the network's total stride (32 frames), and 3x the window. Inputs are
    log-mels, or with ``waveform_samples`` (a waveform file's fixed window in samples)
    (1, N) waveforms of the same audio. ``level`` = (gain, noise): each segment times
    ``gain`` plus seeded white noise of ``noise`` x its RMS (see ``LEVELS``).
    """
    if dynamic_time:
        lengths = [window_seconds, round(window_seconds * 0.5 + 0.37, 2), window_seconds * 3.0]
    else:
        lengths = [window_seconds, window_seconds]
    waves, source = validation_waves(window_seconds, fc, lengths=lengths)
    gain, noise = level
    cases = []
    for k, ((label, w), sec) in enumerate(zip(waves, lengths)):
        w = np.asarray(w, np.float64)
        if (gain, noise) != (1.0, 0.0):
            rms = float(np.sqrt(np.mean(w ** 2)))
            w = w * gain + noise * rms * np.random.default_rng(k).standard_normal(len(w))
            label += f" at {20 * math.log10(gain):+.0f} dB" + (
                f" + noise at {20 * math.log10(noise):+.0f} dB re its RMS" if noise else "")
        w = w.astype(np.float32)
        if waveform_samples is None:
            cases.append((label, to_mel(w, fc, frames_for_seconds(sec, fc))))
        else:  # the window's own length, then odd lengths (7 k samples off any hop multiple)
            n = waveform_samples if k == 0 or not dynamic_time else int(round(sec * fc.sample_rate)) + 7 * k
            cases.append((label, fit_to_length(w, n)[None]))
    return cases, source


@dataclass
class _Oracle:
    """PyTorch float64 outputs of one input and fp32's envelope around them."""

    ref32: tuple[np.ndarray, ...]
    ref64: tuple[np.ndarray, ...]
    envelope: list[float]
    relative: list[float]

    @property
    def ill_conditioned(self) -> bool:
        return max(self.relative, default=0.0) > ILL_CONDITIONED


def _oracle(x: np.ndarray, reference: Runner, reference64: Runner, seed: int) -> _Oracle:
    """Float64 reference and the fp32 envelope of ``x`` (fp32 on x and on perturbed copies)."""
    ref64 = reference64(x)
    runs = [reference(x)]
    rng = np.random.default_rng(seed)
    for _ in range(PERTURBATIONS):
        u = rng.uniform(-1.0, 1.0, x.shape)
        runs.append(reference((x * (1.0 + u * 2.0 ** -23)).astype(np.float32)))
    env = [max(float(np.max(np.abs(r[k].astype(np.float64) - b))) if b.size else 0.0 for r in runs)
           for k, b in enumerate(ref64)]
    scales = [float(np.max(np.abs(b))) if b.size else 0.0 for b in ref64]
    return _Oracle(runs[0], ref64, env, [e / max(1.0, sc) for e, sc in zip(env, scales)])


def check_parity(runner: Runner, reference: Runner, *, window_seconds: float, fc, dynamic_time: bool,
                 tolerance: float | None, report: ValidationReport,
                 reference64: Runner | None = None, waveform_samples: int | None = None,
                 names: tuple[str, str] = ("logits", "embedding"),
                 cases: list[tuple[str, np.ndarray]] | None = None, relative: bool = False) -> None:
    """Compare every output on real-audio cases; record checks (and errors beyond tolerance).

    With ``reference64`` (PyTorch in float64) the file is judged by its distance to it,
    allowed ``tolerance + RELATIVE_FACTOR * envelope`` where the envelope is PyTorch fp32's
    largest distance on the input and on copies perturbed at fp32 rounding level: a
    well-conditioned case keeps the floor (a real export bug, such as a pooling kernel baked
    to one length, gives > 0.1 on outputs of size ~10 and fails). A case whose relative fp32
    error exceeds ``ILL_CONDITIONED`` is recorded but not judged, and (cases built here, not
    passed in) the same audio at each of ``LEVELS`` is tried until a version is
    well-conditioned, which is judged in its place. No well-conditioned case at all: a
    warning in the log and in ``report.warnings``.
    ``relative`` (fp16 weights, whose rounding moves every output by a fraction of its size
    rather than with fp32's arithmetic): the floor is ``tolerance * max(1, scale)``, with
    ``scale`` the output's largest magnitude, and the envelope counts ``FP16_AMPLIFICATION``
    times.
    """
    levels: tuple[tuple[float, float], ...] = ()
    if cases is None:
        cases, report.audio = parity_cases(window_seconds, fc, dynamic_time, waveform_samples)
        levels = LEVELS if reference64 is not None else ()
    stand_ins: dict[tuple[float, float], list[tuple[str, np.ndarray]]] = {}
    for i, (label, x) in enumerate(cases):
        oracle = None if reference64 is None else _oracle(x, reference, reference64, i)
        _judge(runner, reference, label, x, oracle, names, tolerance, relative, report)
        if oracle is None or not oracle.ill_conditioned:
            continue
        for level in levels:  # the same audio quieter / under noise, until well-conditioned
            if level not in stand_ins:
                stand_ins[level] = parity_cases(window_seconds, fc, dynamic_time, waveform_samples, level)[0]
            label2, x2 = stand_ins[level][i]
            oracle2 = _oracle(x2, reference, reference64, i)
            log.debug("%s: relative fp32 error %.2g", label2, max(oracle2.relative))
            if not oracle2.ill_conditioned:
                _judge(runner, reference, label2, x2, oracle2, names, tolerance, relative, report)
                break
    if reference64 is not None and report.checks and not report.judged_cases:
        worst = min(max(c.relative_fp32_error or 0.0 for c in report.checks if c.case == case)
                    for case in {c.case for c in report.checks})
        msg = (f"no parity case is well-conditioned for this checkpoint (PyTorch fp32 is at best "
               f"{worst:.2g} relative off float64, > {ILL_CONDITIONED:g}, on the clip at every level "
               "tried): the file was NOT judged strictly on any input; validate it on in-domain audio")
        log.warning(msg)
        report.warnings.append(msg)


def _judge(runner: Runner, reference: Runner, label: str, x: np.ndarray, oracle: _Oracle | None,
           names: tuple[str, str], tolerance: float | None, relative: bool,
           report: ValidationReport) -> None:
    """Run the file on one case and record a check per output (errors for judged failures)."""
    try:
        got = runner(x)
    except Exception as exc:  # a failing engine is a failed validation
        report.errors.append(f"{label}: the file does not run ({one_line(exc, 200)})")
        return
    ref = reference(x) if oracle is None else oracle.ref64
    for k, (name, a, b) in enumerate(zip(names, got, ref)):
        if a.shape != b.shape:
            report.errors.append(f"{label}: {name} shape {list(a.shape)} != reference {list(b.shape)}")
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if np.all(np.isfinite(a)) else math.inf
        d32 = env = rel = allowed = None
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        ill = False
        if oracle is not None:
            d32 = float(np.max(np.abs(oracle.ref32[k].astype(np.float64) - b))) if b.size else 0.0
            env, rel = oracle.envelope[k], oracle.relative[k]
            ill = oracle.ill_conditioned
            if tolerance is not None:
                if relative:
                    allowed = tolerance * max(1.0, scale) + RELATIVE_FACTOR * FP16_AMPLIFICATION * env
                else:  # a few fp32 samples can miss 3x of the spread: at least the threshold itself
                    allowed = tolerance + RELATIVE_FACTOR * max(env, MIN_ENVELOPE * max(1.0, scale))
        elif tolerance is not None:
            allowed = tolerance
        ok = allowed is None or diff <= allowed
        report.checks.append(OutputCheck(label, name, list(a.shape), diff, tolerance, ok, d32, allowed,
                                         scale, env, rel, ill))
        if not math.isfinite(diff):
            report.errors.append(f"{label}: {name} has non-finite values")
        elif ok or ill:
            continue
        elif oracle is not None:
            report.errors.append(
                f"{label}: {name} differs from PyTorch float64 by {diff:.3g} > allowed {allowed:.3g} "
                f"(tolerance {tolerance:g}{f' x max(1, |output| {scale:.3g})' if relative else ''} + "
                f"{RELATIVE_FACTOR:g}{' x 2^13 (fp16 weights)' if relative else ''} x PyTorch fp32's own "
                f"{env:.3g})")
        else:
            report.errors.append(f"{label}: {name} max abs diff {diff:.3g} > tolerance {tolerance:g}")


def runtime_scores(path: str | Path, reference: Runner, clips: list) -> tuple[np.ndarray, ...]:
    """Clip scores of the file and of PyTorch through the runtime's own audio path.

    Both go through :class:`dymn_edge.runtime.tagger.Tagger` (soxr reading, centring in
    the window, the noise floor, the frontend, the file's fixed frames): the accuracy
    stored in the file is then the accuracy ``dymn-tag`` delivers, not that of an
    evaluation-only resampler.
    Returns (file logits, file probabilities, reference logits, reference probabilities);
    "logits" of clips scored in several windows are the aggregate's ranking key.
    """

    class _ReferenceEngine(Engine):
        """PyTorch behind the runtime's engine interface, with the file's input layout."""

        name = "pytorch"

        def __init__(self, like: Engine) -> None:
            super().__init__(like.path, like.metadata)

        def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, emb = reference(x)
            return np.asarray(logits, np.float32), np.asarray(emb, np.float32)

    engine = load_file(path)
    taggers = (Tagger(engine), Tagger(_ReferenceEngine(engine)))
    out: list[list[np.ndarray]] = [[], [], [], []]
    for c in clips:
        for k, tagger in enumerate(taggers):
            r = tagger.tag_file(c.path, windowed=False)[0]
            out[2 * k].append(r.logits)
            out[2 * k + 1].append(r.probabilities)
    return tuple(np.stack(o) for o in out)


def evaluate_dataset(path: str | Path, reference: Runner, dataset_dir: str | Path, *,
                     split: str | None = "test", progress: bool = False) -> dict:
    """Accuracy (and mAP) of PyTorch and of the file on a labelled set, plus their agreement.

    Both are scored through the runtime's audio path (:func:`runtime_scores`), on the
    ``split`` of the set when it has one (all of it otherwise).
    """
    try:
        ds = load_dataset(dataset_dir, split=split)
    except DymnEdgeError:  # a set without that split: use all of it
        ds = load_dataset(dataset_dir)
    clips = ds.clips
    if progress:
        clips = tqdm(clips, desc=f"accuracy on {ds.name}", unit="clip", leave=False)
    targets = ds.targets_onehot()
    logits, p, ref_logits, p_ref = runtime_scores(path, reference, list(clips))
    out = {"dataset": ds.name, "clips": len(ds), "audio_path": "runtime (dymn-tag)"}
    out.update(reference_mAP=mean_average_precision(p_ref, targets), mAP=mean_average_precision(p, targets))
    if not ds.multilabel:
        out.update(reference_accuracy=accuracy(ref_logits, targets), accuracy=accuracy(logits, targets))
        out["accuracy_delta"] = out["accuracy"] - out["reference_accuracy"]
    out.update(top1_agreement=topk_overlap(ref_logits, logits, 1),
               max_prob_diff=max_prob_diff(p_ref, p))
    return out


def ops_outside_xnnpack(path: str | Path) -> list[str]:
    """Op names of a TFLite graph that XNNPACK leaves to the reference kernels.

    LiteRT applies XNNPACK when the interpreter is built; every partition becomes one
    DELEGATE node whose inputs/outputs are the partition's boundary tensors. A node that
    feeds a delegate's non-constant input, or computes a graph output the delegates do not
    produce (and, transitively, its producers), runs outside. An empty list = fully delegated
    in one partition; several DELEGATE nodes are reported as extra "DELEGATE" entries.
    """
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    w = it._interpreter  # the public API exposes no execution plan
    nodes = [(w.NodeName(i), list(w.NodeInputs(i)), list(w.NodeOutputs(i))) for i in range(w.NumNodes())]
    delegates = [n for n in nodes if n[0] == "DELEGATE"]
    ops = [n for n in nodes if n[0] != "DELEGATE"]
    producer = {t: i for i, (_, _, outs) in enumerate(ops) for t in outs}
    d_out = {t for _, _, outs in delegates for t in outs}
    graph_in = set(w.InputIndices())
    todo = [t for _, ins, _ in delegates for t in ins if t in producer and t not in graph_in]
    todo += [t for t in w.OutputIndices() if t not in d_out]
    outside: set[int] = set()
    while todo:
        t = todo.pop()
        if t in d_out or t in graph_in or t not in producer or producer[t] in outside:
            continue
        i = producer[t]
        outside.add(i)
        todo.extend(x for x in ops[i][1] if x >= 0)
    names = sorted(ops[i][0] for i in outside)
    if not delegates:
        return sorted(n[0] for n in ops)
    return names + ["DELEGATE"] * (len(delegates) - 1)


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
