"""``dymn-export``: registry model (or fine-tuned checkpoint) -> validated ONNX / TFLite file."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import textwrap
import threading
import warnings

from dymn_edge.cliutil import OneLineErrorParser, add_version, check_stdout, exit_code, finite, non_empty
from dymn_edge.threads import pin_blas_threads
from dymn_edge.datasets import load_dataset
from dymn_edge.errors import DymnEdgeError
from dymn_edge.export.api import export_model
from dymn_edge.export.config import ExportConfig, QuantizationConfig
from dymn_edge.formats import FORMATS, Precision, format_spec, int8_variants
from dymn_edge.registry import list_models

log = logging.getLogger("dymn_edge.export")

_EPILOG = """\
examples:
  dymn-export --model dymn-m --format tflite --int8
      AudioSet DyMN-M (weights downloaded once) as weight-only int8 TFLite, 10 s window
  dymn-export --model dymn-s --format onnx
      fp32 ONNX with a dynamic time axis (batch 1 with the default stride_split strategy)
  dymn-export --model dymn-s --weights my_finetune.pt --labels classes.csv --window 5 \\
      --activation softmax --format onnx --int8 --calibration my_clips/
      fine-tuned 1-of-N head (class count read from the weights), names from classes.csv
      (header index,display_name[,mid]), int8 calibrated on your own audio; a head that
      is not 527-class AudioSet needs --activation softmax (1-of-N) or sigmoid (multi-label)
  dymn-export --model dymn-l --random-init --format tflite --fp16
      untrained structural model (for size / latency only; marked untrained in the file)
  dymn-export --model dymn-s --weights fsdd.pt --labels digits.csv --activation softmax \\
      --window 1 --format tflite --waveform
      waveform in, probabilities out, with MediaPipe metadata: runs in MediaPipe's
      AudioClassifier (Android, iOS, web, Python) with no frontend code

{formats}
Every export is validated in its own runtime against PyTorch on real audio; a failed
validation exits 1. Errors in the options exit 2 with one line (add --verbose for details).
"""


def _formats_epilog() -> str:
    """The epilog's "formats and precisions" section, from the formats table."""
    lines = ["formats and precisions:"]
    for spec in FORMATS.values():
        flags = [p.value for p in spec.precisions] + [f"--{v.name.replace('_', '-')}"
                                                      for v in spec.int8_variants]
        lines.append(f"  {spec.format.value:<7} {', '.join(flags)}")
        for key, text in spec.help.items():
            lines += textwrap.wrap(f"{key}: {text}", 88, initial_indent=" " * 10,
                                   subsequent_indent=" " * 12)
    return "\n".join(lines) + "\n"


EPILOG = _EPILOG.format(formats=_formats_epilog())


def _add_precision_flags(p: argparse.ArgumentParser) -> None:
    """--fp16 / --int8 / one flag per named int8 recipe, with help, from the formats table."""
    prec = p.add_mutually_exclusive_group()
    for precision in Precision:
        specs = [s for s in FORMATS.values() if s.supports(precision)]
        if precision is Precision.FP32 or not specs:
            continue
        detail = "; ".join(f"{s.format.value}: {s.help.get(precision.value, precision.value)}"
                           for s in specs)
        prec.add_argument(f"--{precision.value}", action="store_const", const=precision.value,
                          dest="precision", help=f"{precision.value} ({detail})")
    for spec, variant in int8_variants().values():
        prec.add_argument(f"--{variant.name.replace('_', '-')}", action="store_const",
                          const=variant.name, dest="precision",
                          help=f"{spec.format.value}: {variant.help}")


def _add_int8_options(p: argparse.ArgumentParser) -> None:
    """Calibration, its method and the held-out bound of calibrated int8."""
    p.add_argument("--calibration", type=non_empty, metavar="DIR", help="audio for calibrated int8 (--full-int8, "
                   "static QDQ; required there): a labelled set with a train split (its train "
                   "clips) or any folder of audio files; recorded in the file's metadata")
    p.add_argument("--num-calibration", type=int, metavar="N", help="calibration clips (default 64)")
    p.add_argument("--calibration-method", metavar="NAME", help="how static int8 takes ranges from "
                   "the calibration clips: clipwise (default: p5 / p95 of the per-clip minima / "
                   "maxima, robust to a few odd clips), minmax, percentile, entropy")
    p.add_argument("--quant-report", action="store_true", help="with --static-int8: write a per-node "
                   "error table (SQNR / cosine of every quantized tensor against the float graph "
                   "on calibration clips, worst first) beside the file as .quant-report.json / .md")
    p.add_argument("--max-int8-drop", type=finite, metavar="POINTS", help="calibrated int8: the "
                   "largest drop against fp32 allowed on the part of --calibration DIR that "
                   "calibration does not use (held out by speaker / fold when the clips name one, "
                   "else a seeded quarter of the files): accuracy points for a labelled 1-of-N "
                   "set, mAP points for a multi-label one, top-1 disagreement points without "
                   "labels (default 0.5); over it the next int8 recipe is tried (static QDQ -> "
                   "dynamic) and the one kept is recorded")
    p.add_argument("--strict", action="store_true", help="calibrated int8: fail (exit 1) when "
                   "the held-out drop exceeds --max-int8-drop instead of falling back")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="dymn-export", description="Export a DyMN / MN audio tagger to a validated, "
        "self-describing ONNX or TFLite file.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME",
                   help=f"registry name or alias ({', '.join(list_models())})")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", type=non_empty, metavar="PATH", help="checkpoint (.pt, official state-dict "
                     "layout, any class count); default: the released AudioSet weights")
    src.add_argument("--random-init", action="store_true",
                     help="seeded random weights, no download (untrained: size/speed only)")
    p.add_argument("--seed", type=int, default=None, help="seed for --random-init (default 0)")
    p.add_argument("--format", required=True, metavar="FORMAT",
                   help=" or ".join(f.value for f in FORMATS))
    _add_precision_flags(p)
    p.add_argument("--strategy", metavar="NAME",
                   help="depthwise Dy-Conv form, all exact: runtime_weight (one conv with the "
                   "kernel mixed at run time; batch 1; the tflite default), stride_split "
                   "(runtime_weight at stride 1, static_k at stride 2; batch 1; the onnx "
                   "default) or static_k (K static convs weighted by the attention; any batch; "
                   "one XNNPACK partition; the --full-int8 default) or fused (onnx fp32 for "
                   "OpenVINO: each block's depthwise conv, Dy-ReLU and coordinate attention as "
                   "one dymn-edge operator, built on first use with the system C++ compiler; "
                   "ONNX Runtime cannot run it; any batch). Defaults are measured per "
                   "engine (dymn_edge/formats.py)")
    _add_int8_options(p)
    p.add_argument("--labels", type=non_empty, metavar="FILE", help="CSV index,display_name[,mid] naming the classes")
    p.add_argument("--window", type=finite, metavar="SECONDS", help="input window (default: 10 for "
                   "527-class AudioSet heads, else 1); fixed for tflite, nominal for onnx")
    p.add_argument("--activation", metavar="sigmoid|softmax",
                   help="how the head's logits become probabilities: softmax for a 1-of-N "
                   "classifier, sigmoid for multi-label tagging; default sigmoid for 527-class "
                   "AudioSet heads, required for any other head")
    p.add_argument("--waveform", action="store_true",
                   help="waveform in, probabilities out: the log-mel frontend and the activation "
                   "inside the graph (input float32 mono samples at 32 kHz: tflite [1, N] of the "
                   "window, onnx [1, N] any N); tflite files also carry MediaPipe metadata "
                   "(AudioClassifier). fp32 only")
    p.add_argument("--eval-dataset", type=non_empty, metavar="DIR", help="labelled folder (FSDD/ESC-50/generic "
                   "layout) to measure the file's accuracy on, against PyTorch's (default: "
                   "not measured)")
    p.add_argument("--output", "-o", type=non_empty, metavar="PATH", help="output file or existing folder "
                   "(default: ./<model>-<precision>.<format>)")
    p.add_argument("--no-validate", action="store_true", help="skip validation (not recommended)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the step lines "
                   "stay; bars are drawn only on a terminal anyway)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging, converters' own "
                   "messages and warnings, tracebacks")
    add_version(p)
    return p


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(result) -> str:
    """One table: format, precision, size, validation result, max diff, accuracy."""
    meta, rep = result.metadata, result.report
    if rep is None:
        valid, diff, acc = "skipped", "-", "-"
    else:
        valid = "passed" if rep.get("passed") else "FAILED"
        diff = f"{rep.get('max_abs_diff', float('nan')):.2e}"
        if rep.get("fp32_reference_diff") is not None:  # both numbers: the file's, and fp32 PyTorch's own
            diff += f" (PyTorch fp32 {rep['fp32_reference_diff']:.1e})"
        if rep.get("ill_conditioned"):  # reported, not judged: dymn-info shows their numbers
            diff += f"; {len({c['case'] for c in rep['ill_conditioned']})} ill-conditioned case(s) not judged"
        a = rep.get("accuracy") or {}
        acc = (f"{a['accuracy']:.4f} (ref {a['reference_accuracy']:.4f}, {a['accuracy_delta']:+.4f})"
               if "accuracy" in a else "-")
    rows = [("file", "format", "precision", "size MB", "validation", "max diff to float64", "accuracy"),
            (str(result.path), meta.format, meta.precision, f"{result.size_mb:.2f}", valid, diff, acc)]
    text = _table(rows)
    if rep is not None and rep.get("xnnpack_ops_outside") is not None:
        out = rep["xnnpack_ops_outside"]
        text += "\nXNNPACK: " + ("fully delegated" if not out else f"{len(out)} ops outside ({', '.join(sorted(set(out)))})")
    held = (meta.calibration or {}).get("heldout")
    if held:
        text += f"\nint8 on held-out audio ({held['split']}): {held['summary']}"
    if meta.untrained:
        text += "\nWARNING: untrained random-init model: outputs are meaningless"
    return text


#: Third-party loggers that talk on every run (torchvision-missing notices from the ONNX
#: exporter, torchao's optional kernels, absl); quiet unless --verbose.
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "absl", "jax", "torch", "torchao", "litert_torch",
                 "ai_edge_litert", "ai_edge_quantizer", "tensorflow", "onnxruntime", "setuptools")


def _quiet(verbose: bool) -> None:
    """dymn_edge's own lines at INFO; everyone else's only when they are errors (or --verbose).

    The root logger goes to ERROR because some converters log straight to it; records of
    the ``dymn_edge`` logger still reach the root handler (logger levels of ancestors are
    not applied to propagated records).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.ERROR)
    logging.getLogger("dymn_edge").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        warnings.simplefilter("ignore")  # pytree / FutureWarning / DeprecationWarning of converters
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # absl / TF C++ logging in LiteRT
        os.environ.setdefault("GLOG_minloglevel", "2")
        os.environ.setdefault("TORCH_LOGS", "-torch,-onnx")  # torch (re)configures its loggers from this


def _check_options(args: argparse.Namespace) -> None:
    """Option problems the config cannot see, as one line before torch is imported.

    ``--calibration-method`` only means something to a calibrated int8 export, and
    ``--eval-dataset`` is read after the export: a typo there would cost the whole export.
    """
    check_stdout()  # the summary table goes there
    if args.seed is not None and not args.random_init:  # accepted and ignored otherwise
        raise DymnEdgeError("--seed seeds --random-init weights: leave it out with --weights or the "
                            "released weights")
    if args.calibration_method and not args.calibration:
        raise DymnEdgeError("--calibration-method chooses how calibrated int8 takes its ranges: "
                            "it needs --calibration DIR (and --int8 / --static-int8 / --full-int8)")
    if args.eval_dataset:
        try:
            ds = load_dataset(args.eval_dataset)
        except DymnEdgeError as exc:
            raise DymnEdgeError(f"--eval-dataset: {exc}") from None
        if not len(ds):
            raise DymnEdgeError(f"--eval-dataset {args.eval_dataset}: no labelled clips")


#: Signals that stop an export cleanly (exit 128 + signal number).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGTERM / SIGINT as an exception, so that every ``finally`` and ``with`` cleans up.

    With the default SIGTERM action the process ends on the spot: the temporary folder and
    the partial file stay behind. A KeyboardInterrupt subclass passes every ``except
    Exception`` of the converters.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, frame: object) -> None:
    # a second signal must not cut the cleanup the first one started
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """``dymn-export``; SIGTERM / SIGINT stop it cleanly (see :class:`Interrupted`)."""
    previous = ({sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}
                if threading.current_thread() is threading.main_thread() else {})  # signals reach the main thread only
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # the partial file and the temporary folder are gone by now
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
        print(f"dymn-export: interrupted{how}", file=sys.stderr)
        return 128 + int(signum)  # 130 (Ctrl-C), 143 (SIGTERM), as a shell reports a killed job
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _quiet(args.verbose)
    pin_blas_threads()  # the calibration / validation frontend (dymn_edge.threads)
    try:
        _check_options(args)
        quant = None
        named = {v.name: v for _, v in int8_variants().values()}
        if args.precision in named:  # --static-int8 / --full-int8: int8 with the row's recipe
            quant = QuantizationConfig(**named[args.precision].recipe)
            args.precision = "int8"
        if args.calibration_method or args.quant_report:
            if quant is None:
                quant = (QuantizationConfig.default_for(format_spec(args.format).format,
                                                        calibrated=args.calibration is not None)
                         if args.precision == "int8"
                         else QuantizationConfig())
            if args.calibration_method:
                quant.calibration_method = args.calibration_method
                quant.__post_init__()
            quant.report = args.quant_report
        cfg = ExportConfig(
            quantization=quant, model=args.model, weights=args.weights, random_init=args.random_init,
            seed=0 if args.seed is None else args.seed,
            format=args.format, precision=args.precision or "fp32", strategy=args.strategy,
            window_seconds=args.window, calibration=args.calibration,
            num_calibration=args.num_calibration, labels=args.labels, output=args.output,
            validate=not args.no_validate, eval_dataset=args.eval_dataset,
            output_activation=args.activation, waveform=args.waveform,
            max_int8_drop=args.max_int8_drop, strict_int8=args.strict)
        import torch  # noqa: F401, PLC0415 (options are checked: now the heavy import, once)

        _quiet(args.verbose)  # torch's logging setup on import resets the levels of its loggers
        result = export_model(cfg, progress=not args.no_progress and sys.stderr.isatty())
    except DymnEdgeError as exc:  # the exit-code table of dymn_edge.cliutil (1: failed validation)
        if args.verbose:
            log.exception("export failed")
        print(f"dymn-export: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(summary_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
