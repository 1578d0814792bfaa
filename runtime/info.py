"""``dymn-info FILE``: what an exported model file is, read from its own metadata (no torch).

A file is copied to a device long after it was exported; before trusting its scores a user
needs to know what it tags, how its scores are meant (one class or independent tags), the
window it was validated for, how it was shrunk, and what validation measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dymn_edge.cliutil import OneLineErrorParser, add_verbose_and_version, non_empty, run_guarded, setup_logging
from dymn_edge.metadata import ModelMetadata, read_metadata
from dymn_edge.runtime.engines import auto_order

log = logging.getLogger(__name__)

__all__ = ["describe", "main"]

EPILOG = """\
examples:
  dymn-info dymn-s.tflite            human-readable summary
  dymn-info --json model.onnx | jq .validation
                                     the whole metadata as JSON
"""

_SCHEMES = {
    "none": "fp32 (no quantization)",
    "fp16": "fp16 weights, float32 compute",
    "int8_dynamic": "int8 dynamic range: int8 weights, activations quantized at run time",
    "int8_weight_only": "int8 weight-only: int8 weights, float32 compute",
    "int8_static_qdq": "int8 static QDQ: int8 weights and activations (calibrated)",
    "full_int8": "full-integer int8: every op and the I/O int8 (calibrated; for integer-only NPUs)",
}


def _validation_lines(val: dict[str, Any]) -> list[str]:
    if not val or val.get("skipped") or val.get("passed") is None:
        return ["NOT validated (exported with --no-validate): nothing says its outputs match PyTorch"]
    state = "passed" if val.get("passed") else "FAILED"
    lines = [f"{state} in {val.get('engine', '?')} on {val.get('audio') or 'unknown audio'} "
             f"({val.get('precision', '?')})"]
    checks = val.get("checks") or []
    ill = [c for c in checks if c.get("ill_conditioned")]
    judged = [c for c in checks if not c.get("ill_conditioned")]
    diff = max((c["max_abs_diff"] for c in judged if isinstance(c.get("max_abs_diff"), (int, float))),
               default=val.get("max_abs_diff") if not ill else None)
    tols = {c.get("tolerance") for c in checks if c.get("tolerance") is not None}
    d32 = val.get("fp32_reference_diff")
    ref = "PyTorch float64" if isinstance(d32, (int, float)) else "PyTorch fp32"
    if isinstance(diff, (int, float)) and math.isfinite(diff):
        if not tols:
            tol = " (no fixed tolerance: judged by agreement)"
        elif isinstance(d32, (int, float)):
            fp16 = val.get("precision") == "fp16"
            rel = " x max(1, |output|)" if fp16 else ""
            amp = " x 2^13" if fp16 and any("fp32_envelope" in c for c in checks) else ""
            tol = f" (allowed: tolerance {max(tols):g}{rel} + 3{amp} x PyTorch fp32's own distance)"
        else:
            tol = f" (tolerance {max(tols):g})"
        lines.append(f"largest difference to {ref} over {len(judged)} output checks: {diff:.3g}{tol}")
    if ill:  # reported, not judged: which cases, and how far fp32 itself is off there
        worst = max(c.get("relative_fp32_error") or 0.0 for c in ill)
        cases = sorted({str(c.get("case")) for c in ill})
        lines.append(f"ill-conditioned, not judged: {len(cases)} case(s) ({'; '.join(cases)}): PyTorch fp32 "
                     f"up to {worst:.2g} relative off float64, the file {max(c['max_abs_diff'] for c in ill):.3g}")
    envs = [c["fp32_envelope"] for c in judged if isinstance(c.get("fp32_envelope"), (int, float))]
    if envs:  # the judged inputs and their copies perturbed at fp32 rounding level
        lines.append(f"PyTorch fp32's own distance to float64 on the judged inputs (and perturbed copies): "
                     f"{max(envs):.3g}")
    elif isinstance(d32, (int, float)):
        lines.append(f"PyTorch fp32's own distance to float64 on the same inputs: {d32:.3g}")
    acc = val.get("accuracy") or {}
    if "accuracy" in acc:
        lines.append(f"accuracy on {acc.get('dataset', '?')} ({acc.get('clips', '?')} clips): "
                     f"{acc['accuracy']:.4f}, PyTorch {acc.get('reference_accuracy', float('nan')):.4f}"
                     f" ({acc.get('accuracy_delta', float('nan')):+.4f})")
    outside = val.get("xnnpack_ops_outside")
    if outside is not None:
        lines.append("XNNPACK: fully delegated" if not outside
                     else f"XNNPACK: {len(outside)} ops outside ({', '.join(sorted(set(outside)))})")
    lines += [f"warning: {w}" for w in val.get("warnings") or []]
    lines += [f"error: {e}" for e in val.get("errors") or []]
    return lines


def _engines_line(meta: ModelMetadata) -> str:
    """The engines of the table that run this file, in ``--engine auto``'s order, and which are here."""
    rows = auto_order(meta.format, meta.precision, meta.model_name, meta.window_seconds, meta.strategy)
    names = [f"{e.name}{'' if e.installed else ' (not installed)'}" for e in rows]
    chosen = next((e.name for e in rows if e.installed), None)
    return ", ".join(names) + (f"; --engine auto: {chosen}" if chosen else "; none installed")


def describe(meta: ModelMetadata, path: Path | None = None) -> str:
    """The human-readable summary ``dymn-info`` prints."""
    fc = meta.frontend_config
    names = [str(lb.get("display_name")) for lb in sorted(meta.labels, key=lambda d: int(d["index"]))]
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    rows: list[tuple[str, str]] = []
    if path is not None:
        rows.append(("file", f"{path.name} ({path.stat().st_size / 1e6:.2f} MB, {meta.format})"))
    model = f"{meta.model_name} ({meta.arch}, width {meta.width:g}; dynamic-conv form {meta.strategy})"
    if meta.untrained:
        model += "; UNTRAINED random-init structural model: its scores are meaningless"
    rows.append(("model", model))
    rows.append(("task", f"{meta.task} ({meta.output_activation} over {meta.num_classes} classes)"))
    if meta.output_activation == "softmax":  # closed set: silence and noise still get a class
        rows.append(("", "softmax head: no 'nothing' class, one label always wins, even on silence or "
                         "unrelated sound (dymn-listen gates quiet windows: --min-level-dbfs)"))
    rows.append(("labels", f"{len(meta.labels)}: {shown}"))
    shape = "any length (dynamic time)" if meta.dynamic_time else "fixed input"
    if meta.takes_waveform:  # frontend and activation inside the graph
        samples = int(round(meta.window_seconds * fc.sample_rate))
        rows.append(("window", f"{meta.window_seconds:g} s = {samples} samples of mono "
                               f"{fc.sample_rate} Hz waveform in, probabilities out, {shape}; "
                               f"batch {'dynamic' if meta.dynamic_batch else 1}"))
    else:
        rows.append(("window", f"{meta.window_seconds:g} s = {meta.window_frames} frames, {shape}; "
                               f"batch {'dynamic' if meta.dynamic_batch else 1}"))
    scheme = meta.quantization_scheme
    prec = _SCHEMES.get(scheme or "", meta.precision)
    rows.append(("precision", f"{meta.precision}: {prec}" + (f" [{scheme}]" if scheme else "")))
    if meta.quantization and meta.quantization != "none":
        rows.append(("", meta.quantization))
    rows.append(("frontend", ("in the graph: " if meta.takes_waveform else "") + f"log-mel {fc.n_mels} bands, {fc.sample_rate} Hz, n_fft {fc.n_fft}, window "
                             f"{fc.win_length}, hop {fc.hop_length} ({fc.hop_length / fc.sample_rate * 1e3:g} ms), "
                             f"{fc.fmin:g}-{fc.fmax:g} Hz"))
    rows.append(("engines", _engines_line(meta)))
    for i, line in enumerate(_validation_lines(meta.validation)):
        rows.append(("validation" if i == 0 else "", line))
    weights = meta.weights_source or "?"
    if meta.weights_sha256:
        weights += f", sha256 {meta.weights_sha256[:16]}..."
    rows.append(("weights", weights))
    tools = ", ".join(f"{k} {v}" for k, v in sorted(meta.tool_versions.items()))
    rows.append(("tools", tools or "?"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def build_parser() -> argparse.ArgumentParser:
    """The ``dymn-info`` parser (tests check the documented command lines against it)."""
    p = OneLineErrorParser(prog="dymn-info", epilog=EPILOG,
                           description="Describe an exported DyMN/MN model file from its metadata.")
    p.add_argument("file", type=non_empty, metavar="MODEL", help="an .onnx or .tflite file written by dymn-export")
    p.add_argument("--json", action="store_true", help="the whole metadata as JSON")
    add_verbose_and_version(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dymn-info``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        path = Path(args.file)
        meta = read_metadata(path)
        if args.json:
            d = asdict(meta)
            d["task"] = meta.task
            print(json.dumps(d, indent=2, sort_keys=True))
        else:
            print(describe(meta, path))
        return 0

    return run_guarded(body, "dymn-info", verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
