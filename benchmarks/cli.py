"""``dymn-bench``: compute, latency, memory and accuracy of every export of a DyMN, in one table.

Exit codes: 0 done (and gate passed); 1 the regression gate failed, or any requested row
failed (an export that failed or crashed) unless ``--allow-failures``; 2 a usage or input
error (one line on stderr; ``--verbose`` for the traceback). Every option is checked before
the first export, so a typo costs no minutes of exporting or timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from dymn_edge.benchmarks.machine import default_threads
from dymn_edge.benchmarks import front, report, runner
from dymn_edge.benchmarks.accuracy import archive_scores
from dymn_edge.benchmarks.config import BenchConfig, eval_split
from dymn_edge.benchmarks.gate import CI_CONFIG, baseline_form, compare, parse_percent
from dymn_edge.benchmarks.macs import count_model, table
from dymn_edge.benchmarks.npu import format_table, run_npu
from dymn_edge.cliutil import (
    MAX_THREADS, OneLineErrorParser, add_version, check_input_file, check_output_file, non_empty, positive, run_guarded,
    setup_logging,
)
from dymn_edge.datasets import load_dataset
from dymn_edge.errors import DymnEdgeError
from dymn_edge.export.config import MAX_WINDOW_S, MIN_WINDOW_S
from dymn_edge.formats import int8_variants
from dymn_edge.frontend import frames_for_seconds
from dymn_edge.registry import get_spec

log = logging.getLogger("dymn_edge.benchmarks")

EPILOG = """\
examples:
  dymn-bench --model dymn-s                       every format of the exporter's table
  dymn-bench --model dymn-m,mn-m --random-init    DyMN-M and MN-10 in one run: /MN ratios
  dymn-bench --model dymn-m --random-init --formats onnx:fp32,tflite:fp32 --lengths 10
  dymn-bench --weights my_dymn.pt --data ESC-50-master --split 1 --threads 1
  dymn-bench --macs --model dymn-l                analytic MACs per block, nothing run
  dymn-bench --ci-gate --weights DYMN_S.pt --activation softmax --data FSDD_DIR
             --compare .ci/baselines/ci_dymn_s.json     the CI gate (.ci/run)
  dymn-bench --ci-gate ... --write-baseline .ci/baselines/ci_dymn_s.json   (refresh)

what the columns mean:
  model      registry name; with several --model all their files are timed in one run
  status     exported / validated (outputs checked against PyTorch at export) / failed /
             reference (the eager PyTorch fp32 model everything is compared with);
             "(cached)": the file was re-used from the export cache, not exported again
  GMAC       MACs the artifact really computes for one window (the static_k depthwise form
             runs K convolutions; the analytic count is checked against the ONNX graph)
  ops        operators in the file (TFLite flatbuffer ops / ONNX graph nodes); the JSON
             has the count per op type
  acc / mAP  on --data (FSDD: its test split; none given: not measured); delta is
             artifact minus reference on the same clips
  p50 / p90  median / 90th percentile latency per inference (batch 1); n/a where a
             fixed-shape file cannot take that length
  /MN        (DyMN rows, when the run holds the static partner: dymn-s <-> mn-s,
             dymn-m <-> mn-m, dymn-l <-> mn-20) this file's p50 over the MN file's p50 of the same format,
             precision, threads and length, timed in the same run (ratio_to_static)
  xeager     the same model's eager PyTorch p50 over this file's p50 (speedup_vs_eager)
  RTF        real-time factor when streaming with a 1 s hop: time per hop / hop length
  RSS MB     peak resident memory of a process that loaded and ran only that artifact
latencies are measured interleaved (A B A B ...) with a reference GEMM timed in the same job;
the JSON has ratios to it and the achieved fraction of its MAC/s.

export cache: exported files are kept in --workdir (default $DYMN_EDGE_CACHE/bench) and re-used
while the weights (sha256), model, format, precision, window, activation, dymn-edge and converter
versions and the exporter's source (dymn_edge/models/*.py, export/*.py) are unchanged; a second
identical run only measures. --no-cache exports again.
"""


def _csv(kind: type, text: str, what: str) -> list:
    """Comma-separated finite, positive numbers (``--lengths 1,10``, ``--threads 1,2``)."""
    items = text.split(",")
    if any(not x.strip() for x in items):  # "1,,2" or "1,": a lost value, not a style
        raise DymnEdgeError(f"--{what} has an empty entry in '{text}'")
    try:
        values = [kind(x) for x in items]
    except ValueError:
        raise DymnEdgeError(f"--{what} takes comma-separated numbers, got '{text}'") from None
    if len(set(values)) < len(values):  # each would be timed twice in one table
        raise DymnEdgeError(f"--{what} repeats a value in '{text}'")
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise DymnEdgeError(f"--{what} takes finite numbers > 0, got '{text}'")
    if what == "threads" and max(values) > MAX_THREADS:
        raise DymnEdgeError(f"--threads: at most {MAX_THREADS} (4 x this machine's CPUs, at least "
                            f"64), got {max(values)}")
    if what == "lengths" and max(values) > MAX_LENGTH_S:
        raise DymnEdgeError(f"--lengths: at most {MAX_LENGTH_S:g} s, got {max(values):g}")
    return values


#: Longest input timed (s): 10 minutes of log-mel is already 60000 frames per inference.
MAX_LENGTH_S = 600.0
#: Longest --budget (s): one hour per cell is a typo, not a benchmark.
MAX_BUDGET_S = 3600.0
#: What --plot can write (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which model(s) and weights."""
    m = parser.add_argument_group("model")
    m.add_argument("--model", default="dymn-s", metavar="NAME[,NAME]",
                   help="registry name or comma list (dymn-s/m/l, mn-s/m; default dymn-s); "
                        "e.g. dymn-m,mn-m times both in one run and reports the /MN ratio")
    m.add_argument("--weights", type=non_empty, metavar="PATH", help="checkpoint of the one model that is not "
                   "random-init (default: the released AudioSet weights)")
    m.add_argument("--random-init", action="store_true", help="untrained model(s): speed only")
    m.add_argument("--activation", choices=("sigmoid", "softmax"), help="head of the exported "
                   "files for a non-AudioSet --weights (the FSDD reference: softmax)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """What to export and time, and how long."""
    r = parser.add_argument_group("what to run")
    r.add_argument("--formats", type=non_empty, metavar="LIST", help="e.g. onnx:fp32,tflite:int8 (default: all "
                   "format:precision pairs of the exporter's table); tflite:waveform / "
                   "onnx:waveform: fp32 with the frontend in the graph (its cost: the row "
                   "minus the fp32 row); onnx:static_int8 / tflite:full_int8: calibrated int8 "
                   "(need --calibration DIR); openvino:fp32: the onnx file timed in "
                   "OpenVINO; openvino:fused: DyMN exported with --strategy fused (the "
                   "dymn-edge operators), timed in OpenVINO")
    r.add_argument("--window", type=positive, metavar="S", help="export window in seconds "
                   "(default: 10 s for AudioSet heads, 1 s otherwise; with several models the first "
                   "model's, for all: fixed-shape files compare only at one window)")
    r.add_argument("--lengths", default="1,10", metavar="S,S", help="input lengths to time (default 1,10)")
    r.add_argument("--threads", default=None, metavar="N,N", help="thread counts (default: 1, plus "
                   "the physical core count when those cores are idle; the table header says which)")
    r.add_argument("--budget", type=positive, default=2.0, metavar="SECONDS",
                   help="timed seconds per artifact, length and thread count (default 2)")
    r.add_argument("--no-reference", action="store_true", help="leave out the eager PyTorch row")
    r.add_argument("--workdir", type=non_empty, metavar="DIR", help="export cache folder (default "
                   "$DYMN_EDGE_CACHE/bench)")
    r.add_argument("--no-cache", action="store_true", help="export every file again (and "
                   "overwrite its cache entry)")
    r.add_argument("--macs", action="store_true", help="print the analytic per-block MACs and exit")
    r.add_argument("--front", nargs="?", const="all", default=None, metavar="MODEL[,MODEL]",
                   help="the accuracy / latency front: every MN width and DyMN (or these models) "
                        "exported and timed per engine (onnx:fp32, openvino:fp32, tflite:fp32, or "
                        "--formats) at --window (default 1 s), 1 thread, random-init, against "
                        "published mAP; --plot draws it, --json keeps it")
    r.add_argument("--npu", type=non_empty, metavar="ACC[,ACC]", help="compile the --full-int8 TFLite of each --model "
                   "(exported with --calibration DIR) or the --npu-files with Arm's Vela for these "
                   "Ethos-U configurations (e.g. ethos-u55-256,ethos-u65-512; pip install "
                   "'dymn-edge[npu]'): NPU operator share, SRAM / flash use, Vela's estimated time")
    r.add_argument("--npu-files", type=non_empty, metavar="F[,F]", help="with --npu: existing full-int8 .tflite files")
    r.add_argument("--calibration", type=non_empty, metavar="DIR", help="calibration audio of the full-int8 exports "
                   "(--npu) and of the calibrated int8 rows (--formats onnx:static_int8, "
                   "tflite:full_int8)")


def _add_accuracy_options(parser: argparse.ArgumentParser) -> None:
    """Which labelled data to score on (and --score-file)."""
    d = parser.add_argument_group("accuracy")
    d.add_argument("--data", type=non_empty, metavar="DIR", help="labelled clips: FSDD, ESC-50, AudioSet eval "
                   "CSV, or a folder with labels.csv (path,label)")
    d.add_argument("--split", type=non_empty, help="FSDD split (default test) or ESC-50 fold (default: all folds)")
    d.add_argument("--max-clips", type=int, metavar="N", help="score only the first N clips")
    d.add_argument("--no-accuracy", action="store_true", help="skip accuracy")
    d.add_argument("--score-file", type=non_empty, metavar="MODEL", help="only accuracy / mAP of this exported file "
                   "on --data, streamed through dymn-tag's archive path (large sets, resumable: "
                   "--workdir/MODEL.DATA.parquet and its .parts/); counts exactly this run's clips; "
                   "a clip that cannot be scored exits 1 unless --allow-failures")
    d.add_argument("--overwrite", action="store_true", help="with --score-file: replace a scores "
                   "file of another model file or options instead of refusing")
    d.add_argument("--workers", type=int, metavar="N", help="with --score-file: a local Dask cluster")
    d.add_argument("--scheduler", type=non_empty, metavar="ADDR", help="with --score-file: a running Dask cluster")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """Where results go, and the regression gate."""
    o = parser.add_argument_group("output and gate")
    o.add_argument("--json", type=non_empty, metavar="OUT", help="write everything (machine, tools, per-block MACs)")
    o.add_argument("--plot", type=non_empty, metavar="OUT.png", help="accuracy vs latency and vs MACs")
    o.add_argument("--compare", type=non_empty, metavar="BASELINE.json", help="gate this run against a baseline")
    o.add_argument("--max-regression", default=None, metavar="PCT",
                   help="allowed latency regression vs the baseline, relative to the reference "
                        "GEMM (default 15%%)")
    o.add_argument("--max-ratio-regression", default=None, metavar="PCT",
                   help="allowed growth of a DyMN file's latency ratio to its MN partner vs the "
                        "baseline's ratio (default 25%%)")
    o.add_argument("--ci-gate", action="store_true", help="run the baseline's configuration "
                   "(DyMN-S and MN-S, 1 s window, 1 thread) instead of the options above; "
                   "--weights / --activation / --data / --split still say which DyMN-S")
    o.add_argument("--write-baseline", type=non_empty, metavar="PATH", help="write this run as a gate baseline")
    o.add_argument("--allow-failures", action="store_true", help="exit 0 even when some rows "
                   "failed to export (they stay in the table as failed; default: exit 1)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    o.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="dymn-bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark DyMN exports: MACs, load time, latency (1 s / 10 s input, "
                    "1 / 2 threads), peak memory and accuracy against the PyTorch reference, "
                    "for every format and precision of the exporter; optional CI gate.",
        epilog=EPILOG)
    _add_model_options(p)
    _add_run_options(p)
    _add_accuracy_options(p)
    _add_output_options(p)
    add_version(p)
    return p


def _config_from_args(args: argparse.Namespace):
    if args.ci_gate:
        base = dict(CI_CONFIG)
        if args.compare and Path(args.compare).is_file():
            c = report.read_json(args.compare)["config"]
            base.update({k: c[k] for k in CI_CONFIG if k in c and k != "model"})
            base["formats"] = c.get("formats") or c.get("variants")
            # the baseline's models, plus CI_CONFIG's (an older baseline lacks MN-S: it is
            # still measured, and the gate notes that the ratio has no baseline yet)
            models = str(c.get("model", "")).split(",") + CI_CONFIG["model"].split(",")
            base["model"] = ",".join(dict.fromkeys(m for m in models if m))
        return BenchConfig(model=base["model"], formats=base["formats"],
                           random_init_models=tuple(base.get("random_init_models") or ()),
                           window_s=base["window_s"], lengths=tuple(base["lengths"]),
                           threads=tuple(base["threads"]), budget_s=base["budget_s"],
                           weights=args.weights, activation=args.activation, data=args.data,
                           split=args.split, workdir=args.workdir, cache=not args.no_cache,
                           progress=not args.quiet and sys.stderr.isatty())
    return BenchConfig(
        model=args.model, weights=args.weights, random_init=args.random_init,
        activation=args.activation,
        formats=[v for v in args.formats.split(",") if v.strip()] if args.formats else None,
        data=args.data, split=args.split, no_accuracy=args.no_accuracy,
        max_clips=args.max_clips, window_s=args.window,
        lengths=tuple(_csv(float, args.lengths, "lengths")),
        threads=_threads(args), budget_s=args.budget,
        reference=not args.no_reference, workdir=args.workdir, cache=not args.no_cache,
        calibration=args.calibration, progress=not args.quiet and sys.stderr.isatty())


def _threads(args: argparse.Namespace) -> tuple[int, ...]:
    """``--threads``, or what the machine can give (machine.default_threads; noted on args)."""
    if args.threads is not None:
        return tuple(_csv(int, args.threads, "threads"))
    threads, args.threads_default = default_threads()
    return threads


def _print_macs(args: argparse.Namespace) -> int:
    for s, model in ((s, m.strip()) for m in args.model.split(",") if m.strip()
                     for s in _csv(float, args.lengths, "lengths")):
        cx = count_model(model, frames=frames_for_seconds(s))
        published = get_spec(model).published_mAP
        print(f"{model}, {s:g} s ({cx.frames} frames): {cx.macs / 1e9:.4f} GMAC "
              f"({cx.macs_with_aggregation / 1e9:.4f} with kernel aggregation), "
              f"{cx.params / 1e6:.3f} M params ({cx.params_with_bn_stats / 1e6:.3f} M with BN "
              "statistics)" + (f"; published AudioSet mAP {published:.1f}" if published else ""))
        print(table(cx))
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_guarded(lambda: _main(args), "dymn-bench", verbose=args.verbose)


def _score_file(args: argparse.Namespace) -> int:
    """``--score-file M --data D``: one file's accuracy / mAP via the archive path (archive.py).

    Scores only this run's clips (the archive's output holds exactly them); a clip that
    could not be scored is a failure: exit 1 unless ``--allow-failures``.
    """
    if not args.data:
        raise DymnEdgeError("--score-file needs --data DIR (the labelled set)")
    split = eval_split(args.data, args.split)  # FSDD: its test split unless asked
    ds = load_dataset(args.data, split=split)
    if args.max_clips:
        ds.clips = ds.clips[:args.max_clips]
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in ds.name)
    out = Path(args.workdir or ".") / f"{Path(args.score_file).stem}.{name}.parquet"
    s, summary = archive_scores(args.score_file, ds, out, workers=args.workers, scheduler=args.scheduler,
                                progress=not args.quiet and sys.stderr.isatty(), overwrite=args.overwrite)
    which = f"split {split}" if split is not None else "all clips"
    failed = len(ds) - (s.clips if s is not None else 0)
    if s is not None:
        acc = "-" if s.accuracy is None else f"{s.accuracy:.4f}"
        print(f"{Path(args.score_file).name} on {ds.name} ({which}): accuracy {acc}, mAP {s.map:.4f} "
              f"({s.clips} of {len(ds)} clips; {summary.line()})")
    if failed:
        tolerated = args.allow_failures and s is not None
        print(f"dymn-bench: {failed} of {len(ds)} clips could not be scored (error rows in {out})"
              + ("" if tolerated else "; exit 1" + ("" if s is None else " (--allow-failures tolerates them)")),
              file=sys.stderr)
        return 0 if tolerated else 1
    return 0


def _npu(args: argparse.Namespace) -> int:
    """``--npu ACCS``: Vela rows (benchmarks/npu.py), printed and written with --json."""
    rows = run_npu(accelerators=args.npu.split(","),
                   files=[f for f in (args.npu_files or "").split(",") if f.strip()] or None,
                   models=[m for m in args.model.split(",") if m.strip()], weights=args.weights,
                   random_init=args.random_init, window_s=args.window, activation=args.activation,
                   calibration=args.calibration, workdir=args.workdir)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"npu": rows}, indent=1))
        print(f"JSON: {args.json}")
    return 0 if all("error" not in r for r in rows) else 1


def _front(args: argparse.Namespace) -> int:
    """``--front``: the accuracy / latency front per engine (benchmarks/front.py)."""
    bad = [flag for flag, on in (("--weights", args.weights), ("--data", args.data), ("--compare", args.compare),
                                 ("--ci-gate", args.ci_gate), ("--write-baseline", args.write_baseline),
                                 ("--threads", args.threads), ("--calibration", args.calibration)) if on]
    if bad:
        raise DymnEdgeError(f"--front times random-init models at 1 thread against published mAP: "
                            f"leave out {', '.join(bad)}")
    models = front.FRONT_MODELS if args.front == "all" else tuple(
        dict.fromkeys(get_spec(m).name for m in args.front.split(",") if m.strip()))
    no_map = [m for m in models if get_spec(m).published_mAP is None]
    if no_map or not models:
        raise DymnEdgeError(f"--front needs models with a published mAP; not: {', '.join(no_map) or '(none given)'}")
    variants = tuple(v for v in args.formats.split(",") if v.strip()) if args.formats else front.FRONT_VARIANTS
    window = args.window or 1.0
    cfg = front.front_config(models, variants, window_s=window, budget_s=args.budget, workdir=args.workdir,
                             progress=not args.quiet and sys.stderr.isatty())
    result, points = front.run_front(cfg)
    print(front.format_front(points, window))
    if args.json:
        print(f"JSON: {report.write_json(result, args.json)}")
    if args.plot:
        print(f"plot: {front.plot_front(points, args.plot, window)}")
    failed = _failed_rows(result)
    for line in failed:
        log.error("failed: %s", line)
    return 1 if failed and not args.allow_failures else 0


#: The gate's default bounds (--max-regression / --max-ratio-regression left out).
DEFAULT_MAX_REGRESSION = "15%"
DEFAULT_MAX_RATIO_REGRESSION = "25%"


def _check_options(args: argparse.Namespace) -> None:
    """Every option problem as one line before any export or timing starts.

    Options that the chosen mode would silently ignore are refused too: a user who typed
    them expected them to do something.
    """
    _check_modes(args)
    _check_values(args)
    _check_files(args)


def _check_modes(args: argparse.Namespace) -> None:
    """Options that belong to another mode or option, and contradictions between them."""
    score = bool(args.score_file)
    if not score and (args.workers is not None or args.scheduler):
        raise DymnEdgeError("--workers / --scheduler score one exported file on a Dask cluster: "
                            "use them with --score-file MODEL --data DIR")
    if score:  # a folder is named as such, not "model file not found"
        check_input_file(args.score_file, "--score-file model")
    for flag, value in (("--max-regression", args.max_regression),
                        ("--max-ratio-regression", args.max_ratio_regression)):
        if value is not None:
            parse_percent(value, flag)
    if (args.max_regression or args.max_ratio_regression) and not args.compare:  # ignored otherwise
        raise DymnEdgeError("--max-regression / --max-ratio-regression bound the gate of --compare "
                            "BASELINE.json: add --compare, or leave them out")
    if args.no_accuracy and (args.data or score):  # contradictory: --data is only read for accuracy
        raise DymnEdgeError("--no-accuracy skips accuracy, which is all --data / --score-file are read "
                            "for: leave one out")
    if args.overwrite and not score:
        raise DymnEdgeError("--overwrite replaces the scores file of --score-file: add --score-file MODEL")
    if args.workers is not None and args.workers < 1:
        raise DymnEdgeError(f"--workers must be >= 1, got {args.workers}")
    if args.max_clips is not None and args.max_clips < 1:
        raise DymnEdgeError(f"--max-clips must be >= 1, got {args.max_clips}")
    if (args.max_clips is not None or args.split) and not args.data:
        raise DymnEdgeError("--max-clips / --split choose clips of --data DIR: add --data")
    if args.npu_files and not args.npu:
        raise DymnEdgeError("--npu-files are compiled by --npu ACC: add --npu (e.g. ethos-u55-256)")
    if args.calibration and not (args.npu or (args.formats and any(
            v.strip().lower() in int8_variants() for v in args.formats.split(",")))):
        raise DymnEdgeError("--calibration is used by --npu and the calibrated int8 rows only: add "
                            "--formats onnx:static_int8,tflite:full_int8 (or --npu), or leave it out")


def _check_values(args: argparse.Namespace) -> None:
    """Lists, budgets and the window: well-formed and in range."""
    _csv(float, args.lengths, "lengths")
    if args.threads is not None:
        _csv(int, args.threads, "threads")
    if args.budget > MAX_BUDGET_S:
        raise DymnEdgeError(f"--budget is seconds per artifact, length and thread count: at most "
                            f"{MAX_BUDGET_S:g}, got {args.budget:g}")
    if args.formats:
        names = [v.strip().lower() for v in args.formats.split(",")]
        if any(not n for n in names) or len(set(names)) < len(names):
            raise DymnEdgeError(f"--formats has an empty or repeated entry in '{args.formats}'")
    models = [m.strip().lower() for m in args.model.split(",")]
    if any(not m for m in models) or len(set(models)) < len(models):
        raise DymnEdgeError(f"--model has an empty or repeated entry in '{args.model}'")
    if args.window is not None and not args.macs:
        if not MIN_WINDOW_S <= args.window <= MAX_WINDOW_S:
            raise DymnEdgeError(f"--window must be between {MIN_WINDOW_S} and {MAX_WINDOW_S} s (what "
                                f"the exporter takes), got {args.window:g}")


def _check_files(args: argparse.Namespace) -> None:
    """Output files writable, the baseline and the labelled set readable."""
    if args.json:
        check_output_file(args.json, "--json")
    if args.plot:
        check_output_file(args.plot, "--plot", PLOT_SUFFIXES)
    if args.write_baseline:
        check_output_file(args.write_baseline, "--write-baseline")
    if args.compare:
        check_input_file(args.compare, "--compare baseline")
        base = report.read_json(args.compare)
        if not isinstance(base, dict) or not isinstance(base.get("artifacts"), list):
            raise DymnEdgeError(f"--compare {args.compare}: not a dymn-bench baseline (no artifacts "
                                "list; write one with --write-baseline)")
    if args.data and not args.macs:
        ds = load_dataset(args.data, split=eval_split(args.data, args.split))
        if not len(ds):
            raise DymnEdgeError(f"--data {args.data}: no labelled clips"
                                + (f" in split {args.split}" if args.split else ""))


def _failed_rows(result: dict) -> list[str]:
    """'model variant: why' of every artifact that failed (an export error or crash)."""
    return [f"{r.get('model', '')} {r['name']}: {r.get('error', 'failed')}".strip()
            for r in result["artifacts"] if r["status"] == "failed"]


def _main(args: argparse.Namespace) -> int:
    _check_options(args)
    if args.macs:
        return _print_macs(args)
    if args.score_file:
        return _score_file(args)
    if args.npu:
        return _npu(args)
    if args.front:
        return _front(args)
    max_reg = parse_percent(args.max_regression or DEFAULT_MAX_REGRESSION)
    max_ratio = parse_percent(args.max_ratio_regression or DEFAULT_MAX_RATIO_REGRESSION, "--max-ratio-regression")
    cfg = _config_from_args(args)
    result = runner.run_benchmark(cfg)
    result.setdefault("config", {})["threads_default"] = getattr(args, "threads_default", None)  # header line
    print(report.format_report(result))
    if args.json:
        print(f"JSON: {report.write_json(result, args.json)}")
    if args.plot:
        print(f"plot: {report.plot(result, args.plot)}")
    if args.write_baseline:
        print(f"baseline written: {report.write_json(baseline_form(result), args.write_baseline)}")
    failed = _failed_rows(result)
    if failed and args.write_baseline:
        log.warning("baseline holds failed artifacts, which the gate cannot check")
    code = 0
    if args.compare:
        gate = compare(result, report.read_json(args.compare), max_regression=max_reg,
                       max_ratio_regression=max_ratio)
        print(gate.summary())
        code = 0 if gate.ok else 1
    if failed:
        for line in failed:
            log.error("failed: %s", line)
        print(f"dymn-bench: {len(failed)} of {len(result['artifacts'])} rows failed"
              + ("" if args.allow_failures else " (exit 1; --allow-failures tolerates them)"),
              file=sys.stderr)
        if not args.allow_failures:
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
