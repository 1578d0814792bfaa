"""Per-hop CPU cost of the streaming scorer, with and without the model.

    python -m dymn_edge.benchmarks.stream_cost MODEL [--window 10] [--hop 1] [--seconds 60]

Feeds ``--seconds`` of audio (the package's parity clip, looped) in 0.1 s chunks, as a
microphone would, and reports the thread CPU time per scored hop: once with the model file's
engine, once with an engine that returns zeros at once (the scorer's own cost: ring, noise
floor, log-mel, slicing). Thread CPU time, not wall time: another process on the machine
does not inflate it. Several repeats, the median is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from dymn_edge.audio import resample
from dymn_edge.export.calibration import parity_clip
from dymn_edge.runtime.engines import Engine, load_engine
from dymn_edge.runtime.stream import StreamingScorer
from dymn_edge.runtime.tagger import Tagger


class NullEngine(Engine):
    """The file's metadata and input layout, no model: outputs are zeros."""

    name = "null"

    def __init__(self, like: Engine) -> None:
        super().__init__(like.path, like.metadata)
        self._c = like.metadata.num_classes

    def _run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((x.shape[0], self._c), np.float32), np.zeros((x.shape[0], 8), np.float32)


def per_hop_ms(engine: Engine, window: float, hop: float, seconds: float, repeats: int = 3) -> float:
    """Median over ``repeats`` of thread CPU ms per scored hop (warm-up hops excluded)."""
    raw, sr = parity_clip()
    x = resample(raw, sr, 32000)
    wave = np.tile(x, int(np.ceil(seconds * 32000 / len(x))))[: int(seconds * 32000)]
    chunk = 3200
    runs = []
    for _ in range(repeats):
        scorer = StreamingScorer(Tagger(engine), window, hop)
        warm = int(window * 32000)
        for i in range(0, warm, chunk):  # fill the first window (not measured)
            scorer.push(wave[i:i + chunk])
        hops0 = scorer.hops_run
        t = time.thread_time()
        for i in range(warm, len(wave), chunk):
            scorer.push(wave[i:i + chunk])
        runs.append((time.thread_time() - t) * 1e3 / max(1, scorer.hops_run - hops0))
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--hop", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args(argv)
    engine = load_engine(args.model, threads=1)
    scorer_only = per_hop_ms(NullEngine(engine), args.window, args.hop, args.seconds)
    full = per_hop_ms(engine, args.window, args.hop, args.seconds)
    print(f"{args.window:g} s window, {args.hop:g} s hop: scorer alone {scorer_only:.2f} ms CPU per hop, "
          f"with {engine.name} {full:.2f} ms CPU per hop ({engine.path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
