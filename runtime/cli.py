"""``dymn-tag`` (files) and ``dymn-listen`` (microphone): the torch-free command-line tools.

Both print user errors (:class:`~dymn_edge.errors.DymnEdgeError`) as one line on stderr
and exit 2 (tracebacks with ``--verbose``); logging is configured here and only here.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dymn_edge.cliutil import (
    EXIT_FAILED, EXIT_USAGE, OneLineErrorParser, add_version, finite, non_empty, run_guarded, setup_logging, thread_count,
)
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.device import options as dev
from dymn_edge.runtime.archive import ArchiveOptions, output_format, run_archive
from dymn_edge.runtime.device.options import DEVICE_EXAMPLES, add_device_args
from dymn_edge.runtime.engines import ENGINE_CHOICES, load_engine
from dymn_edge.runtime.events import SOFTMAX_MIN_LEVEL_DBFS, EventConfig, EventTracker
from dymn_edge.runtime.microphone import Listener, list_devices
from dymn_edge.runtime.output import (
    UNTRAINED_WARNING, JsonLinesSink, TableWriter, TagFilter, TerminalSink, json_line, window_json,
)
from dymn_edge.runtime.sinks import SinkSet
from dymn_edge.runtime.stream import StreamingScorer
from dymn_edge.runtime.tagger import DEFAULT_DITHER, Tagger

log = logging.getLogger("dymn_edge.runtime")

__all__ = ["tag_main", "listen_main"]

EXIT_USER_ERROR = EXIT_USAGE
EXIT_FILES_FAILED = EXIT_FAILED  # dymn-tag --output: some files became error rows

TAG_EXAMPLES = """\
examples:
  dymn-tag --model dymn-s.tflite street.wav            top 5 tags of the whole clip
  dymn-tag --model fsdd.onnx --window 1 --hop 0.5 --json long.flac > tags.jsonl
                                                       per-window tags as JSON Lines
  dymn-tag --model m.onnx --threshold 0.3 --include Speech --include Music a.wav
                                                       only these labels, only if >= 0.3
  dymn-tag --model m.onnx --exclude /m/09x0r --top-k 3 *.wav
                                                       labels by display name or AudioSet mid
  dymn-tag --model m.tflite --output tags.parquet recordings/ more.csv
                                                       an archive: one Parquet row per window,
                                                       resumable (re-run reuses unchanged parts)
  dymn-tag --model m.tflite --output tags.parquet --workers 8 recordings/
  dymn-tag --model m.tflite --output tags.jsonl --scheduler tcp://head:8786 list.txt
                                                       the same on a local / running Dask cluster

how audio is fed: clips shorter than the model window are centred in silence with a
-80 dBFS noise floor (as the models were trained and validated); windowed mode adds one
window aligned to the end of the file, so no audio is dropped. Fixed-shape files (TFLite)
cannot look at more than the window they were exported for.
JSON Lines: one object per window {"file", "start", "end", "tags": [{"label", "index",
"mid", "probability"}]}; untrained (random-init) models add "untrained": true.
With --output, a file that cannot be read is one error row {"file", "error"}; the run goes
on, ends with a summary line on stderr and exits 1 (0 with a warning: --allow-failures).
Resume: a run that stops keeps its parts in OUTPUT.parts/ (with run.json, its model, options
and inputs); the same command reuses the parts of unchanged files and redoes the rest. The
output always holds exactly this run's files; a finished run removes OUTPUT.parts/. An OUTPUT
or parts of another model or options (or a .jsonl, which records no run) are refused:
--overwrite starts over.
"""

LISTEN_EXAMPLES = """\
examples:
  dymn-listen --list-devices                           find your microphone
  dymn-listen --model dymn-s.tflite                    tag the default input until Ctrl-C
  dymn-listen --model m.tflite --device "USB" --threads 2 --duration 60
  dymn-listen --model fsdd.onnx --window 1 --hop 0.25 --json | jq .
                                                       JSON Lines: one line per event change
  dymn-listen --model m.onnx --json --every-hop        ...and one line per scored hop

window and hop: every HOP seconds the model scores the last WINDOW seconds. The default
window is the one the file was exported (and validated) for: very short windows tag
badly, long ones report the same event many times and cost more per hop. Events use
per-label smoothing and hysteresis (onset >= --on, offset < --off, at least
--min-duration seconds), so one continuous sound is one event with a start and an end.
Ctrl-C or SIGTERM stops with a one-line summary (audio seconds, hops run and skipped,
overflows, mean/p95 inference time, real-time factor). Exit status 2 on user errors
(no device, unsupported rate, bad model file), 0 otherwise.
"""


def _run_guarded(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """The one CLI scaffold (:func:`dymn_edge.cliutil.run_guarded`) around ``fn(args)``."""
    return run_guarded(lambda: fn(args), prog, verbose=args.verbose)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", metavar="PATH",
                   help="exported .onnx or .tflite file (engine chosen from its content)")
    p.add_argument("--threads", type=thread_count, default=None, metavar="N",
                   help="inference threads (default: the engine's choice; 1 on a busy Pi)")
    p.add_argument("--delegate", default=None, metavar="NAME|PATH[:k=v,...]",
                   help="LiteRT delegate: xnnpack (default), none, or a delegate library "
                        "(e.g. an NPU vendor delegate) with options")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help="engine for the file (ONNX: onnxruntime or openvino; TFLite: litert); "
                        "auto (default): the fastest installed for the file (docs/engines.md)")
    p.add_argument("--window", type=finite, default=None, metavar="SECONDS",
                   help="analysis window (default: the model file's own window)")
    p.add_argument("--hop", type=finite, default=None, metavar="SECONDS", help="hop between windows")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="tags per window (default 5)")
    p.add_argument("--threshold", type=finite, default=0.0, metavar="P",
                   help="hide tags below this probability (default 0)")
    p.add_argument("--include", action="append", default=[], metavar="LABEL",
                   help="only these labels (display name or mid; repeat or comma-separate)")
    p.add_argument("--exclude", action="append", default=[], metavar="LABEL",
                   help="never these labels (display name or mid)")
    p.add_argument("--json", action="store_true", help="JSON Lines on stdout")
    p.add_argument("--dither", type=finite, default=None, metavar="STD",
                   help="noise floor added before the frontend (default 1e-4; 0 = off)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging and tracebacks")


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    if not args.model:
        raise DymnEdgeError("--model PATH is required (an .onnx or .tflite file from dymn-export)")
    if args.threads is not None and args.threads < 1:
        raise DymnEdgeError(f"--threads must be >= 1, got {args.threads}")
    if args.top_k is not None and args.top_k < 1:
        raise DymnEdgeError(f"--top-k must be >= 1, got {args.top_k}")
    engine = load_engine(args.model, threads=args.threads, delegate=args.delegate, engine=args.engine)
    tagger = Tagger(engine, dither=DEFAULT_DITHER if args.dither is None else args.dither)
    filt = TagFilter.build(tagger.labels, top_k=args.top_k, threshold=args.threshold,
                           include=args.include, exclude=args.exclude)
    return engine, tagger, filt


# ---------------------------------------------------------------------------------------
# dymn-tag


def _tag(args: argparse.Namespace) -> int:
    if not args.files:
        raise DymnEdgeError("no audio files given (dymn-tag --model M FILE...)")
    if args.output is not None or args.workers is not None or args.scheduler is not None:
        return _tag_archive(args)
    archive_only = [flag for flag, on in (("--scores", args.scores), ("--embeddings", args.embeddings),
                                          ("--task-size", args.task_size != 50)) if on]
    if archive_only:
        raise DymnEdgeError(f"{' / '.join(archive_only)} shape the rows of an --output file: add "
                            "--output TAGS.parquet (or .jsonl), or leave them out")
    if args.overwrite or args.allow_failures or args.strict:
        raise DymnEdgeError("--overwrite / --allow-failures / --strict apply to an archive: add --output "
                            "TAGS.parquet (without it, a file that cannot be tagged is already exit 2)")
    engine, tagger, filt = _load(args)
    untrained = engine.metadata.untrained
    if args.window is not None or args.hop is not None:  # option errors before the first file
        window = tagger.window_seconds if args.window is None else args.window
        tagger.check_window(window)
        tagger.check_hop(window if args.hop is None else args.hop, window)
    out = sys.stdout
    if untrained and not args.json:
        print(UNTRAINED_WARNING, file=out)
    failed = 0
    for path in args.files:
        try:  # scores are written as they come: a long file shows progress, Ctrl-C keeps it
            windowed = tagger.file_is_windowed(path, args.window, args.hop)
            table = None
            for r in tagger.iter_file(path, args.window, args.hop, windowed=windowed):
                sel = filt.select(r.probabilities, r.logits)
                if args.json:
                    extra: dict[str, Any] = {"file": str(path)}
                    if untrained:
                        extra["untrained"] = True
                    out.write(json_line(window_json(r.start, r.end, tagger.labels, sel, **extra)) + "\n")
                    out.flush()
                else:
                    if table is None:
                        mode = "windows" if windowed else "whole clip"
                        table = TableWriter(tagger.labels, out, title=f"{path} ({mode}, "
                                            f"{engine.metadata.model_name} {engine.metadata.precision})")
                    table.write(r.start, r.end, sel)
        except DymnEdgeError as exc:  # one bad file is one error line, not the end of the batch
            out.flush()
            failed += 1
            print(f"dymn-tag: error: {exc}", file=sys.stderr)
    out.flush()
    if failed:
        if len(args.files) > 1:
            print(f"dymn-tag: {failed} of {len(args.files)} files could not be tagged", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _tag_archive(args: argparse.Namespace) -> int:
    """``--output`` / ``--workers`` / ``--scheduler``: the resumable archive path (archive.py)."""
    if not args.output:
        raise DymnEdgeError("--workers / --scheduler write to a file: add --output TAGS.parquet (or .jsonl)")
    if not args.model:
        raise DymnEdgeError("--model PATH is required (an .onnx or .tflite file from dymn-export)")
    if args.top_k is not None and args.top_k < 1:
        raise DymnEdgeError(f"--top-k must be >= 1, got {args.top_k}")
    if args.threads is not None and args.threads < 1:
        raise DymnEdgeError(f"--threads must be >= 1, got {args.threads}")
    if args.json:  # accepted and ignored would be a silent surprise
        raise DymnEdgeError("--json prints to the terminal; with --output the file's suffix chooses the "
                            "format (TAGS.jsonl for JSON Lines): leave --json out")
    opts = ArchiveOptions(
        window=args.window, hop=args.hop, windowed=args.window is not None or args.hop is not None,
        top_k=args.top_k, threshold=args.threshold, include=tuple(args.include),
        exclude=tuple(args.exclude), scores=args.scores, embeddings=args.embeddings,
        dither=DEFAULT_DITHER if args.dither is None else args.dither, fmt=output_format(Path(args.output)),
        threads=args.threads, delegate=args.delegate, engine=args.engine)
    summary = run_archive(args.model, args.files, args.output, opts=opts, task_size=args.task_size,
                          workers=args.workers, scheduler=args.scheduler, progress=sys.stderr.isatty(),
                          overwrite=args.overwrite)
    print(f"dymn-tag: {summary.line()}", file=sys.stderr)
    if summary.error_rows:
        tolerated = args.allow_failures and not args.strict
        print(f"dymn-tag: {'warning' if tolerated else 'error'}: {summary.error_rows} files could not "
              f"be tagged (error rows in {summary.output})"
              f"{'' if tolerated else '; exit 1 (--allow-failures tolerates them)'}", file=sys.stderr)
        if not tolerated:
            return EXIT_FILES_FAILED
    return 0


def build_tag_parser() -> argparse.ArgumentParser:
    """The ``dymn-tag`` parser (tests check the documented command lines against it)."""
    p = OneLineErrorParser(
        prog="dymn-tag", description="Tag audio files with an exported DyMN/MN model (no torch).",
        epilog=TAG_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="AUDIO", help="audio files (any rate/format soundfile reads)")
    _common(p)
    arc = p.add_argument_group("archives (resumable; parallel with Dask: pip install 'dymn-edge[cluster]')")
    arc.add_argument("--output", "-o", type=non_empty, default=None, metavar="PATH.parquet|PATH.jsonl",
                     help="write one row per window to this file; AUDIO may then also be folders "
                          "(recursive) and .txt/.csv manifests; parts in PATH.parts/ make re-runs resume")
    arc.add_argument("--workers", type=int, default=None, metavar="N",
                     help="tag on a local Dask cluster of N one-thread worker processes")
    arc.add_argument("--scheduler", type=non_empty, default=None, metavar="tcp://HOST:8786",
                     help="tag on a running Dask cluster (workers need dymn-edge and the audio paths)")
    arc.add_argument("--task-size", type=int, default=50, metavar="FILES",
                     help="files per task and per part file (default 50)")
    arc.add_argument("--scores", action="store_true", help="also store every class probability")
    arc.add_argument("--embeddings", action="store_true", help="also store the model embedding")
    arc.add_argument("--allow-failures", action="store_true",
                     help="exit 0 with a warning when some files could not be tagged (error rows); "
                          "default: exit 1")
    arc.add_argument("--strict", action="store_true",
                     help="exit 1 when any file could not be tagged (the default; overrides "
                          "--allow-failures)")
    arc.add_argument("--overwrite", action="store_true",
                     help="replace an OUTPUT (and OUTPUT.parts/) of another run instead of refusing")
    add_version(p)
    return p


def tag_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dymn-tag``."""
    args = build_tag_parser().parse_args(argv)
    setup_logging(args.verbose)
    return _run_guarded(_tag, args, "dymn-tag")


# ---------------------------------------------------------------------------------------
# dymn-listen


def _level_floor(text: str) -> float | str:
    """argparse ``type`` of --min-level-dbfs: a finite dBFS value <= 0, or ``off``."""
    if text.strip().lower() == "off":
        return "off"
    value = finite(text)
    if value > 0:
        raise argparse.ArgumentTypeError(f"a level in dBFS is <= 0 (full scale), got '{text}'")
    return value


def _min_level(args: argparse.Namespace, tagger: Any) -> float | None:
    """The level gate: --min-level-dbfs, else on for softmax heads (no "nothing" class)."""
    if args.min_level_dbfs is not None:
        return None if args.min_level_dbfs == "off" else float(args.min_level_dbfs)
    softmax = getattr(tagger.metadata, "output_activation", "") == "softmax"
    return SOFTMAX_MIN_LEVEL_DBFS if softmax else None


def _event_config(args: argparse.Namespace, tagger: Any) -> EventConfig:
    """The event tracker's settings: --on / --off / --min-duration, --smooth, the level gate."""
    smoothing, alpha, median = "ema", 0.7, 3
    if args.smooth:
        kind, _, val = args.smooth.partition(":")
        smoothing = kind.strip().lower()
        if smoothing == "none" and val:  # ignored otherwise
            raise DymnEdgeError(f"--smooth none takes no value, got '{args.smooth}'")
        try:
            if smoothing == "ema" and val:
                alpha = float(val)
            elif smoothing == "median" and val:
                median = int(val)
        except ValueError as exc:
            raise DymnEdgeError(f"--smooth takes ema[:ALPHA], median[:HOPS] or none, got '{args.smooth}'") from exc
    return EventConfig(on=args.on, off=args.off if args.off is not None else min(args.on, 0.6 * args.on),
                       min_duration=args.min_duration, smoothing=smoothing, alpha=alpha, median=median,
                       min_level_dbfs=_min_level(args, tagger))


def _listen(args: argparse.Namespace) -> int:
    if args.list_devices:
        print(list_devices())
        return 0

    # everything a start checks, up to opening the microphone, runs before
    # --print-systemd-unit: a unit that would crash-loop is never printed
    if args.duration is not None and args.duration <= 0:
        raise DymnEdgeError(f"--duration must be positive, got {args.duration:g}")
    if args.device_rate is not None and args.device_rate <= 0:
        raise DymnEdgeError(f"--device-rate must be a positive rate in Hz, got {args.device_rate}")
    _, tagger, filt = _load(args)
    hop = 1.0 if args.hop is None else args.hop
    tagger.check_hop(hop, args.window)
    scorer = StreamingScorer(tagger, args.window, hop)
    cfg = _event_config(args, tagger)
    tracker = EventTracker(tagger.labels, cfg, hop_s=scorer.hop_s,
                           per_label=dev.per_label_thresholds(args, tagger.labels, cfg))
    plan = dev.check_device(args, tagger.labels, filt)
    if args.print_systemd_unit:
        print(dev.systemd_unit(args.argv, plan), end="")
        return 0
    web = dev.start_web(plan, args, tagger, scorer, tracker, filt)  # --web: own thread; None without
    listener = Listener(scorer, tracker, device=args.device, device_rate=args.device_rate)
    # the terminal / JSON output is the first sink; --include / --exclude filter every sink's events
    output = (JsonLinesSink if args.json else TerminalSink)(
        tagger.labels, filt, sys.stdout, every_hop=args.every_hop, tracker=tracker,
        untrained=tagger.metadata.untrained)
    device_sinks = dev.build_sinks(args, plan, tagger, filt, lambda: listener.stats.device, scorer.sample_rate)
    sinks = listener.sinks = SinkSet([output, *device_sinks], keep=filt.keeps, sample_rate=scorer.sample_rate)
    if device_sinks:
        signal.signal(signal.SIGHUP, lambda signum, frame: listener.reopen.set())
    stop = threading.Event()

    def _on_term(signum: int, frame: Any) -> None:
        stop.set()

    old = signal.signal(signal.SIGTERM, _on_term)
    try:
        stats = listener.run(duration=args.duration, stop=stop,
                             on_hop=None if web is None else web.live.hop)
    except BaseException:
        listener.finish()  # device errors too: open events are closed into the sinks
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
        if web is not None:
            web.stop()
    listener.finish()  # open events go to every sink (the terminal's too), then the sinks close
    sinks.summary(stats)
    return 0


def build_listen_parser() -> argparse.ArgumentParser:
    """The ``dymn-listen`` parser (tests check the documented command lines against it)."""
    p = OneLineErrorParser(
        prog="dymn-listen",
        description="Tag live microphone audio with an exported DyMN/MN model (no torch).",
        epilog=LISTEN_EXAMPLES + "\n" + _device_examples(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--device", "-d", type=non_empty, default=None, metavar="NAME|INDEX",
                   help="input device: index, exact name or unique part of it (default: system default)")
    p.add_argument("--device-rate", type=int, default=None, metavar="HZ",
                   help="capture at this rate (default: 32000 if the device takes it, else the first "
                        "common rate it accepts); audio is resampled to 32 kHz with soxr")
    p.add_argument("--duration", type=finite, default=None, metavar="SECONDS",
                   help="stop after this much audio (default: until Ctrl-C / SIGTERM)")
    p.add_argument("--every-hop", action="store_true", help="also print every scored hop")
    p.add_argument("--on", type=finite, default=0.5, metavar="P", help="event onset threshold (default 0.5)")
    p.add_argument("--off", type=finite, default=None, metavar="P",
                   help="event offset threshold, below --on (default 0.6 x --on)")
    p.add_argument("--min-duration", type=finite, default=0.0, metavar="SECONDS",
                   help="shortest reported event (default 0: a single hop counts)")
    p.add_argument("--smooth", type=non_empty, default=None, metavar="ema[:ALPHA]|median[:HOPS]|none",
                   help="per-label score smoothing over hops (default ema:0.7)")
    p.add_argument("--min-level-dbfs", type=_level_floor, default=None, metavar="DBFS|off",
                   help="level gate: a window whose audio RMS is below DBFS scores nothing (no event, "
                        "no live tag). Default for softmax heads, which have no 'nothing' class and "
                        f"name a class even for silence: {SOFTMAX_MIN_LEVEL_DBFS:g}; sigmoid heads: off")

    add_device_args(p)
    add_version(p)
    return p


def listen_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dymn-listen``."""
    p = build_listen_parser()
    args = p.parse_args(argv)
    if args.list_devices:  # every other option would be accepted and ignored
        ignored = [a.option_strings[0] for a in p._actions
                   if a.dest not in ("help", "version", "list_devices", "verbose")
                   and getattr(args, a.dest) != a.default]
        if ignored:
            p.error(f"--list-devices lists the inputs and exits; leave out {', '.join(ignored)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for --print-systemd-unit
    setup_logging(args.verbose)
    return _run_guarded(_listen, args, "dymn-listen")


def _device_examples() -> str:
    return DEVICE_EXAMPLES

