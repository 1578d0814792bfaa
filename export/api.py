"""``export_model``: one call from an :class:`ExportConfig` to a validated, self-describing file.

Steps: build the model (registry + weights, or a seeded random init) -> labels -> patched
export form -> float file -> fp16/int8 variant -> validation in the file's own runtime ->
metadata written into the file. Nothing is cached between calls.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from dymn_edge.arch import DynConvStrategy, strategy_supports_dynamic_batch
from dymn_edge.export.fused_onnx import uses_fused_ops
from dymn_edge.atomic import create_partial, remove_dead_partials
from dymn_edge.errors import DymnEdgeError, ExportError, LabelsError, ValidationError
from dymn_edge.export import heldout
from dymn_edge.export import validate as v
from dymn_edge.export.calibration import calibration_mels
from dymn_edge.export.config import ExportConfig
from dymn_edge.export.formats import Format, Precision, format_spec, mel_io
from dymn_edge.export.quant_report import add_heldout
from dymn_edge.export.waveform import DEFAULT_STFT, OUTPUT_NAMES, WaveformModel, waveform_io
from dymn_edge.frontend import frames_for_seconds, samples_for_frames
from dymn_edge.labels import audioset_labels, generic_labels, read_labels_csv
from dymn_edge.metadata import (
    WAVEFORM_SCHEMA_VERSION, ModelMetadata, TensorInfo, installed_versions, scrub_paths,
)
from dymn_edge.registry import get_spec
from dymn_edge.weights import sha256_file

log = logging.getLogger(__name__)

__all__ = ["ExportResult", "export_model", "default_output_path", "tool_versions"]


@dataclass
class ExportResult:
    """What an export produced."""

    path: Path
    metadata: ModelMetadata
    report: dict | None  # ValidationReport.summary(); None with validate=False
    size_bytes: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


#: The distributions whose versions shape an exported file (recorded in its metadata).
EXPORT_TOOLS = ("dymn-edge", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim",
                "litert-torch", "ai-edge-litert", "ai-edge-quantizer")


def tool_versions() -> dict[str, str]:
    """Versions of every tool that shaped the file (missing ones are skipped)."""
    return installed_versions(EXPORT_TOOLS)


def default_output_path(cfg: ExportConfig, model_name: str) -> Path:
    """``<model>[-untrained]-<precision>.<suffix>`` in the current folder (or ``cfg.output`` dir)."""
    return cfg.output_path(model_name)


def _partial_path(out_path: Path) -> Path:
    """A hidden partial file beside the output (same file system: the rename is atomic).

    Partial files of earlier exports of the same output whose process died (SIGKILL, power
    cut) are removed first; the new one has the umask's mode, which the output keeps.
    """
    remove_dead_partials(out_path)
    return create_partial(out_path)


def _labels(cfg: ExportConfig, num_classes: int, spec) -> list:
    if cfg.labels is not None:
        labels = read_labels_csv(cfg.labels)
        if len(labels) != num_classes:
            raise LabelsError(f"{cfg.labels}: {len(labels)} labels, but the model has "
                              f"{num_classes} classes")
        return labels
    if num_classes == 527 and spec.label_set == "audioset":
        return audioset_labels()
    log.warning("no --labels file for a %d-class head: classes are named class_0..class_%d",
                num_classes, num_classes - 1)
    return generic_labels(num_classes)


def export_model(cfg: ExportConfig, *, progress: bool = True) -> ExportResult:
    """Export, validate and describe one model file as ``cfg`` says.

    Raises a :class:`~dymn_edge.errors.DymnEdgeError` subclass for anything the user can fix
    (unknown model, bad weights, labels mismatch, unsupported precision, unwritable output)
    before any slow step, and :class:`~dymn_edge.errors.ValidationError` when the written file
    disagrees with PyTorch. The file is written to a hidden temporary name beside the output
    and renamed to it only once validated (or with ``validate=False``), so an interrupted or
    failed export never leaves a file at the output path that looks usable; a file that
    failed validation is kept for inspection as ``<name>.failed-validation<suffix>``, its
    metadata saying so.
    """
    from dymn_edge.models import create_model  # noqa: PLC0415

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    spec = get_spec(cfg.model)
    model = create_model(spec.name, weights=cfg.weights, pretrained=not cfg.random_init,
                         seed=cfg.seed, allow_download=cfg.allow_download)
    num_classes = int(model.num_classes) if hasattr(model, "num_classes") else int(
        model.classifier[-1].out_features)
    weights_path = getattr(model, "weights_path", None)
    weights_sha = sha256_file(weights_path) if weights_path else None
    labels = _labels(cfg, num_classes, spec)
    activation = cfg.activation_for(num_classes)  # before any slow step: a missing flag fails now
    untrained = bool(getattr(model, "untrained", False))
    if untrained:
        log.warning("%s: exporting an UNTRAINED random-init model (seed %d): its outputs are "
                    "meaningless; the file's metadata says untrained=true", spec.name, cfg.seed)
    window = cfg.window_for(num_classes)
    frames = frames_for_seconds(window, spec.frontend)
    strategy = cfg.resolved_strategy
    dyn_time = cfg.format_spec.dynamic_axes
    # a waveform graph is batch 1 whatever the strategy: torch.export fixes the batch of the
    # in-graph frontend (its reflect padding's broadcast matmuls guard it at 1)
    dyn_batch = dyn_time and strategy_supports_dynamic_batch(strategy) and not cfg.waveform
    if dyn_time and cfg.waveform and strategy_supports_dynamic_batch(strategy):
        log.warning("--waveform files take batch 1: %s gives no dynamic batch here", strategy)
    out_path = cfg.output_path(spec.name)  # checked again: the folder may have changed since
    quant_desc = _quant_description(cfg)
    timings["load"] = time.perf_counter() - t0

    part = _partial_path(out_path)
    try:
        result, report = _export_to(part, out_path, cfg, spec, model, labels, activation, untrained,
                                    weights_path, weights_sha, window, frames, strategy, dyn_batch,
                                    dyn_time, quant_desc, timings, t0, progress)
        if report is not None and not report.passed:
            failed = out_path.with_name(f"{out_path.stem}.failed-validation{out_path.suffix}")
            os.replace(part, failed)
            raise ValidationError(f"validation failed: {'; '.join(report.errors)} (the file is "
                                  f"kept for inspection as {failed}; nothing was written to "
                                  f"{out_path})")
        os.replace(part, out_path)
    finally:
        part.unlink(missing_ok=True)  # interrupted or crashed: no half-written file anywhere
    log.info("wrote %s (%.2f MB) in %.0f s", out_path, result.size_bytes / 1e6, timings["total"])
    return result


def _quant_description(cfg: ExportConfig) -> str:
    """What the file's numbers are, in words (the metadata's ``quantization``)."""
    if cfg.precision is Precision.FP16:
        return "fp16 weights (float16 constants dequantized at load), float32 compute"
    if cfg.precision is Precision.INT8:
        assert cfg.quantization is not None
        return cfg.quantization.describe()
    return "none"


def _export_to(part: Path, out_path: Path, cfg: ExportConfig, spec, model, labels: list,
               activation: str, untrained: bool, weights_path, weights_sha: str | None,
               window: float, frames: int, strategy: str, dyn_batch: bool, dyn_time: bool,
               quant_desc: str, timings: dict[str, float], t0: float, progress: bool):
    """Convert, quantize, describe and validate into ``part``; the result names ``out_path``."""
    from dymn_edge.models.patcher import make_exportable  # noqa: PLC0415

    fmt, prec, fc, q = cfg.format, cfg.precision, spec.frontend, cfg.quantization
    t = time.perf_counter()
    exportable = make_exportable(model, strategy, layout=cfg.format_spec.layout)
    if strategy == DynConvStrategy.FUSED.value and not uses_fused_ops(exportable):
        raise ExportError(f"{spec.name} has no dynamic blocks: --strategy fused applies to DyMN models")
    with tempfile.TemporaryDirectory(prefix="dymn-edge-export-") as tmp:
        tmp_path = Path(tmp) / ("model" + cfg.format_spec.suffix)
        calib = None
        if prec is Precision.INT8 and q.needs_calibration:
            calib = calibration_mels(cfg.calibration, window, fc, progress=progress)
            quant_desc += f"; calibrated on {calib.source}"
        with _step(progress, f"converting {spec.name} to {fmt.value} ({strategy})", ticker=True):
            module, io = _graph(exportable, cfg, fc, activation, frames, window)
            cfg.format_spec.write_function()(module, tmp_path, io=io, dynamic_batch=dyn_batch)
        timings["convert"] = time.perf_counter() - t
        t = time.perf_counter()
        fp32_graph = tmp_path.read_bytes() if calib is not None else b""  # held-out check's reference
        if prec is not Precision.FP32:
            with _step(progress, f"quantizing ({prec.value})"):
                _quantize(tmp_path, fmt, prec, q, calib, progress,
                          report_path=out_path if q.report else None)
        timings["quantize"] = time.perf_counter() - t
        shutil.copyfile(tmp_path, part)

    meta = _metadata(part, cfg, spec, labels, activation, untrained, weights_path, weights_sha,
                     window, strategy, dyn_batch, dyn_time, quant_desc, calib)

    report = None
    t = time.perf_counter()
    # validate the file as shipped (metadata already inside), then record the result in it
    _write_metadata(part, fmt, meta)
    if calib is not None:
        with _step(progress, f"int8 against fp32 on {calib.heldout.source}"):
            _int8_on_heldout(part, out_path, fp32_graph, cfg, meta, calib, progress)
        timings["heldout"] = time.perf_counter() - t
        t = time.perf_counter()
    if cfg.validate:
        with _step(progress, f"validating in {cfg.validator_engine}"):
            report = _validate(part, cfg, model, meta, progress)
        meta.validation = report.summary()
    else:
        meta.validation = {"passed": None, "skipped": True}
    timings["validate"] = time.perf_counter() - t
    _write_metadata(part, fmt, meta)
    if cfg.validate:
        _same_outputs_after_rewrite(part, frames, report, meta)
        meta.validation = report.summary()
    size = part.stat().st_size
    timings["total"] = time.perf_counter() - t0
    return ExportResult(out_path, meta, meta.validation if cfg.validate else None, size, timings), report


def _metadata(part: Path, cfg: ExportConfig, spec, labels: list, activation: str, untrained: bool,
              weights_path, weights_sha: str | None, window: float, strategy: str, dyn_batch: bool,
              dyn_time: bool, quant_desc: str, calib) -> ModelMetadata:
    """What the file says about itself (its I/O read back from the written file)."""
    fmt, prec, fc, q = cfg.format, cfg.precision, spec.frontend, cfg.quantization
    inputs, outputs = _io_info(part, fmt)
    return ModelMetadata(
        model_name=spec.name, arch=spec.arch.value, width=spec.width, num_classes=len(labels),
        labels=[{"index": lb.index, "mid": lb.mid, "display_name": lb.display_name} for lb in labels],
        frontend=fc.to_dict(), window_seconds=window, dynamic_batch=dyn_batch,
        dynamic_time=dyn_time, inputs=inputs, outputs=outputs, format=fmt.value,
        precision=prec.value, quantization=quant_desc, strategy=strategy,
        output_activation=activation, untrained=untrained,
        weights_sha256=weights_sha,
        weights_source=(Path(weights_path).name if weights_path else f"random init (seed {cfg.seed})"),
        tool_versions=tool_versions(), quantization_scheme=_scheme_id(prec, q),
        input_kind="waveform" if cfg.waveform else "log_mel",
        schema_version=WAVEFORM_SCHEMA_VERSION if cfg.waveform else 1,
        calibration=(None if calib is None else {**cfg.calibration.to_dict(), "count": len(calib.mels),
                                                 "description": calib.source}),
    )


def _graph(exportable, cfg: ExportConfig, fc, activation: str, frames: int, window: float):
    """(module, GraphIO) to convert: the patched model, or it behind the in-graph frontend."""
    if not cfg.waveform:
        return exportable, mel_io(frames, fc.n_mels)

    module = WaveformModel(exportable, fc, activation, DEFAULT_STFT).eval()
    return module, waveform_io(samples_for_frames(frames, fc, window), fc)


def _same_outputs_after_rewrite(path: Path, frames: int, report, meta: ModelMetadata) -> None:
    """The metadata rewrite must not change the graph: the file still runs, finite outputs."""
    fc = meta.frontend_config
    if meta.takes_waveform:  # a quiet signal: log(mel + 1e-5) stays finite either way
        probe = np.full((1, samples_for_frames(frames, fc, meta.window_seconds)), 1e-3, np.float32)
    else:
        probe = np.full((1, 1, fc.n_mels, frames), -1.0, np.float32)
    try:
        logits, emb = v.make_runner(path)(probe)
        if not (np.all(np.isfinite(logits)) and np.all(np.isfinite(emb))):
            report.errors.append("final file gives non-finite outputs")
    except Exception as exc:
        report.errors.append(f"final file does not run after writing metadata ({str(exc)[:200]})")


def _quantize(path: Path, fmt: Format, prec: Precision, q, calib, progress: bool,
              report_path: Path | None = None) -> None:
    """Rewrite the fp32 file ``path`` at ``prec`` with the format's quantizer (formats table)."""
    format_spec(fmt).call("quantizer", path, prec, q, None if calib is None else calib.mels,
                          progress=progress, report_path=report_path)


def _int8_on_heldout(part: Path, out_path: Path, fp32_graph: bytes, cfg: ExportConfig,
                     meta: ModelMetadata, calib, progress: bool) -> None:
    """Hold the int8 file ``part`` to ``cfg.int8_bound`` on audio calibration did not use.

    fp32 (the same graph before quantization, through the same engine) is the reference.
    Over the bound: one warning line and the next recipe (:meth:`QuantizationConfig.fallbacks`)
    replaces ``part``, re-measured; ``--strict``, or no recipe within the bound (the best one
    named), raises :class:`ValidationError`. Every measured recipe, the split and which file
    was kept go into ``meta`` (``calibration["heldout"]``, and in words in ``quantization``).
    An untrained (random-init) model's numbers are recorded but not enforced: its outputs are
    meaningless, and its int8 files exist for size, speed and NPU checks.
    """
    fmt, suffix, bound, held = cfg.format, cfg.format_spec.suffix, cfg.int8_bound, calib.heldout
    recipes = [cfg.quantization, *cfg.quantization.fallbacks()]
    checks: list = []
    with tempfile.TemporaryDirectory(prefix="dymn-edge-heldout-") as tmp:
        ref = Path(tmp) / f"reference{suffix}"
        ref.write_bytes(fp32_graph)
        ins, outs = _io_info(ref, fmt)
        _write_metadata(ref, fmt, dataclasses.replace(
            meta, precision="fp32", quantization="none", quantization_scheme="none", inputs=ins,
            outputs=outs, calibration=None, validation={}))
        reference = heldout.logits(v.make_runner(ref), held.mels)
        for i, recipe in enumerate(recipes):
            if i:  # the next recipe from the same fp32 graph replaces the file
                src = Path(tmp) / f"model{suffix}"
                src.write_bytes(fp32_graph)
                with _step(progress, f"quantizing ({recipe.describe()})"):
                    _quantize(src, fmt, Precision.INT8, recipe, calib, progress)
                shutil.copyfile(src, part)
                meta.inputs, meta.outputs = _io_info(part, fmt)
                meta.quantization = recipe.describe() + ("; calibrated on " + calib.source
                                                         if recipe.needs_calibration else "")
                meta.quantization_scheme = _scheme_id(Precision.INT8, recipe)
                _write_metadata(part, fmt, meta)
            checks.append(heldout.measure(v.make_runner(part), reference, held,
                                          recipe=meta.quantization_scheme, split=calib.split,
                                          bound_points=bound))
            if checks[-1].passed:
                break
            if meta.untrained:  # no accuracy to protect: the numbers are recorded, not enforced
                checks[-1].enforced = False
                log.warning("int8 on held-out audio: %s", checks[-1].summary())
                break
            if cfg.strict_int8:
                raise ValidationError(f"int8 on held-out audio ({calib.split}): {checks[-1].summary()}; "
                                      "--strict: no fallback")
            nxt = recipes[i + 1].describe() if i + 1 < len(recipes) else None
            log.warning("int8 on held-out audio: %s; %s", checks[-1].summary(),
                        f"falling back to {nxt}" if nxt else "no other recipe to fall back to")
    _record_heldout(part, out_path, cfg, meta, calib, checks)


def _record_heldout(part: Path, out_path: Path, cfg: ExportConfig, meta: ModelMetadata, calib,
                    checks: list) -> None:
    """Fail when no recipe held the bound; else write every measured recipe into the file."""
    bound = cfg.int8_bound
    if checks[-1].enforced and not checks[-1].passed:
        best = min(checks, key=lambda c: c.drop_points)
        raise ValidationError(f"int8 misses --max-int8-drop {bound:g} on held-out audio "
                              f"({calib.split}) with every recipe; best: {best.summary()}")
    kept = checks[-1]
    summary = kept.summary() + "".join(f"; kept instead of {c.recipe} ({c.measure} drop "
                                       f"{c.drop_points:+.2f} points)" for c in checks[:-1])
    meta.quantization += f"; held-out check ({calib.split}): {summary}"
    meta.calibration = {**(meta.calibration or {}), "heldout": {
        "split": calib.split, "clips": kept.clips, "bound_points": bound, "measure": kept.measure,
        "kept": kept.recipe, "summary": summary, "checks": [c.to_dict() for c in checks]}}
    if cfg.quantization.report and out_path.with_name(out_path.name + ".quant-report.json").is_file():
        add_heldout(out_path, meta.calibration["heldout"])
    _write_metadata(part, cfg.format, meta)


def _io_info(path: Path, fmt: Format) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The file's inputs and outputs, read by the format's I/O reader (formats table)."""
    return format_spec(fmt).call("io_reader", path)


def _scheme_id(prec: Precision, q) -> str:
    """The short quantization id written next to the human-readable description."""
    if prec is Precision.FP32:
        return "none"
    if prec is Precision.FP16:
        return "fp16"
    return q.scheme.value if q.scheme.value == "full_int8" else f"int8_{q.scheme.value}"


def _write_metadata(path: Path, fmt: Format, meta: ModelMetadata) -> None:
    """Write ``meta`` into the file with the format's metadata writer (formats table)."""
    # no folder of the export machine travels with the file (calibration folders, error texts)
    meta.quantization = scrub_paths(meta.quantization)
    meta.weights_source = scrub_paths(meta.weights_source)
    meta.validation = scrub_paths(meta.validation)
    format_spec(fmt).call("metadata_writer", path, meta)


def _validate(path: Path, cfg: ExportConfig, model, meta: ModelMetadata, progress: bool):
    t = time.perf_counter()
    prec, fc = cfg.precision, meta.frontend_config
    report = v.ValidationReport(engine=cfg.validator_engine, audio="", precision=prec.value)
    try:
        engine = v.load_file(path)
    except DymnEdgeError as exc:  # the runtime cannot load what was written: a failed validation
        report.errors.append(f"the file does not load in the runtime ({exc})")
        return report
    runner, report.engine = engine.run, f"{engine.name} (dymn_edge.runtime)"
    samples, names = None, ("logits", "embedding")
    if cfg.waveform:  # the oracle is the faithful model behind the PyTorch frontend

        model = WaveformModel(model, fc, meta.output_activation, DEFAULT_STFT).eval()
        samples = engine.input_spec.samples or samples_for_frames(meta.window_frames, fc, meta.window_seconds)
        names = OUTPUT_NAMES
    reference = v.torch_runner(model)
    tol = cfg.format_spec.tolerance.get(prec.value)  # None for int8: judged by agreement
    v.check_parity(runner, reference, window_seconds=meta.window_seconds, fc=fc,
                   dynamic_time=meta.dynamic_time, tolerance=tol, report=report,
                   reference64=v.torch64_runner(model), waveform_samples=samples, names=names,
                   relative=prec is Precision.FP16)
    eval_dir = cfg.eval_dataset
    if eval_dir is not None:
        acc = v.evaluate_dataset(path, reference, eval_dir, progress=progress)
        report.accuracy = acc
        drop = cfg.extra.get("max_accuracy_drop", 0.02)
        if "accuracy_delta" in acc and acc["accuracy_delta"] < -drop:
            report.errors.append(f"accuracy on {acc['dataset']} dropped {-acc['accuracy_delta']:.4f} "
                                 f"(> {drop:g}): {acc['reference_accuracy']:.4f} -> {acc['accuracy']:.4f}")
    elif prec is Precision.INT8:
        log.warning("int8 accuracy not measured: no labelled set (pass eval_dataset / --eval-dataset); "
                    "reported agreement is the max difference on the parity clip only")
    if cfg.format_spec.delegate_report is not None:  # TFLite: ops XNNPACK leaves out
        report.xnnpack_ops_outside = cfg.format_spec.call("delegate_report", path)
    report.seconds = time.perf_counter() - t
    return report


class _step:
    """Log a long step's start and duration at INFO (a spinner-free progress line).

    Step lines are logged whatever ``progress`` says (that flag is for bars only): a
    redirected log still shows what the export is doing; the caller's logging level
    decides whether they appear. ``ticker=True`` (the 40-110 s conversion) adds the elapsed
    time while the step runs: a status line rewritten every second on a terminal
    (``progress``), a "still ..." log line every :data:`TICK_LOG_S` seconds otherwise.
    """

    def __init__(self, progress: bool, what: str, *, ticker: bool = False) -> None:
        self.enabled, self.what = True, what
        self.ticker = ElapsedTicker(what, tty=progress) if ticker else None

    def __enter__(self) -> "_step":
        self.t = time.perf_counter()
        if self.enabled:
            log.info("%s ...", self.what)
        if self.ticker is not None:
            self.ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.ticker is not None:
            self.ticker.stop()
        if self.enabled and exc[0] is None:
            log.info("%s: done in %.1f s", self.what, time.perf_counter() - self.t)


#: Seconds between "still converting" log lines when stderr is not a terminal.
TICK_LOG_S = 30.0


class ElapsedTicker:
    """Elapsed time of a step that reports nothing itself (a converter), from a thread.

    On a terminal (``tty``) one status line, rewritten every ``tty_every`` s and cleared at the
    end; elsewhere ``still <what>, N s`` every ``log_every`` s (INFO, in the log's own format),
    so a redirected log gets a line per half minute, not a carriage-return stream. The lines go
    to a duplicate of the standard error taken at :meth:`start`: the converters' output
    capture (:func:`dymn_edge.native_output.converter_output`) points file descriptor 2 at a
    temporary file while they run.
    """

    def __init__(self, what: str, *, tty: bool, tty_every: float = 1.0,
                 log_every: float = TICK_LOG_S, stream: TextIO | None = None) -> None:
        self.what, self.tty = what, tty
        self.every = tty_every if tty else log_every
        self.stream = stream
        self._own: TextIO | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def start(self) -> None:
        if self.stream is None:
            try:
                self._own = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
            except (AttributeError, OSError, ValueError):  # no real descriptor (captured)
                self._own = None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="dymn-edge-ticker", daemon=True)
        self._thread.start()

    def _out(self) -> TextIO:
        return self.stream or self._own or sys.stderr

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            elapsed = time.perf_counter() - self._t0
            if self.tty:
                self._out().write(f"\r{self.what}: {elapsed:.0f} s")
            elif log.isEnabledFor(logging.INFO):
                record = log.makeRecord(log.name, logging.INFO, __file__, 0, "still %s, %.0f s",
                                        (self.what, elapsed), None)
                handler = next((h for h in logging.getLogger().handlers if h.formatter), None)
                fmt = handler.formatter if handler else logging.Formatter("%(message)s")
                self._out().write(fmt.format(record) + "\n")
            else:
                continue
            self.ticks += 1
            self._out().flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.tty and self.ticks:
            self._out().write("\r\033[K")  # clear the status line
            self._out().flush()
        if self._own is not None:
            self._own.close()
            self._own = None
