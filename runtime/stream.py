"""Streaming scorer: a sliding window over 32 kHz audio, scored every hop.

openWakeWord / silero-vad style: audio arrives in chunks of any size; every ``hop`` seconds of
*audio* (not wall time) the window that ends there is scored. Hop boundaries sit at multiples
of the hop counted in samples since the stream started, so the windows and their scores do
not depend on how the audio was chunked.

Invariant (log-mel files): a full window's log-mel frames ARE the frames of the continuous
log-mel of the stream, sliced. Each contiguous stretch of audio (from the start, a
:meth:`StreamingScorer.reset` or a :meth:`StreamingScorer.gap`) gets a noise floor that
depends on the absolute sample position alone (:func:`stream_noise`), then the
:class:`~dymn_edge.frontend.StreamingLogMel` of that stretch, whose frames equal
:class:`~dymn_edge.frontend.LogMelFrontend` on the whole stretch; they go into a ring of
frames. The window ``[e - N, e)`` is the slice of frames ``(e - N - origin) / hop_length``
onwards, as many as the per-window frontend gives for N samples (fixed-shape files: their
frame count). So every hop computes the log-mel of the new audio only (1 s of frames per
1 s hop, not the whole 10 s window). File mode slices the same way:
:func:`score_wave` pushes a whole waveform through the scorer, and the test checks the
slices against :class:`~dymn_edge.frontend.LogMelFrontend` of the whole noise-floored signal.

A window's last frames need ~400 samples (12.5 ms) past its end (the frame's FFT window),
so a window is scored by the push that brings those samples (at a gap, the stretch's end is
flushed: its last frames use the end reflection, as at the end of a file).

Warm-up (less than a full window since the stretch began), windows whose start is not on the
frame grid (a hop that is no multiple of ``hop_length``) and waveform-input files use the
per-window path instead: the tagger's own preparation (centred in zeros when short, the
tagger's noise floor, the frontend on that window alone), equal to the file tagger's window
``[t - window, t]``.

Event logic (smoothing, hysteresis, the level gate) lives in :mod:`dymn_edge.runtime.events`;
the scorer only measures each scored window's audio level (RMS dBFS of the window's own
samples, before the noise floor) for it. Capture and resampling live in
:mod:`dymn_edge.runtime.microphone`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.events import level_dbfs
from dymn_edge.runtime.rings import AudioRing, LogMelTrack
from dymn_edge.runtime.tagger import Tagger, WindowScores

log = logging.getLogger(__name__)

__all__ = ["StreamingScorer", "StreamUpdate", "score_wave"]


@dataclass
class StreamUpdate:
    """What one ``push`` produced: scored windows (in order), each window's audio level (dBFS,
    for the event tracker's level gate) and hops skipped on request."""

    scores: list[WindowScores] = field(default_factory=list)
    skipped: int = 0
    inference_ms: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)


class StreamingScorer:
    """Score the last ``window_s`` seconds every ``hop_s`` seconds of 32 kHz audio."""

    def __init__(self, tagger: Tagger, window_s: float | None = None, hop_s: float = 1.0) -> None:
        self.tagger = tagger
        self.sample_rate = tagger.sample_rate
        self.window_s = tagger.window_seconds if window_s is None else float(window_s)
        self.window = tagger.check_window(self.window_s)
        self.hop = int(round(hop_s * self.sample_rate))
        if self.hop <= 0:
            raise DymnEdgeError(f"hop must be positive, got {hop_s:g} s")
        self.hop_s = self.hop / self.sample_rate
        self._ring = AudioRing(self.window)
        fc = tagger.frontend_config
        # log-mel files take the frame ring; waveform files (frontend in the graph) do not
        self.sliced = tagger.frontend is not None
        if self.sliced:
            self.window_frames = tagger.frontend.num_frames(self.window)
            self._track = LogMelTrack(fc, self.window_frames + 2 * self.hop // fc.hop_length + 8,
                                      tagger.dither)
        self.reset()

    def reset(self) -> None:
        """Forget all audio and start a new stream at time 0."""
        self.total = 0  # samples since the stream started (gaps included)
        self.hops_run = 0
        self.hops_skipped = 0
        self._new_stretch()

    def _new_stretch(self) -> None:
        self._ring.clear()
        self._origin = self.total  # first sample of the current contiguous stretch
        # (end in stream samples, audio level) of full windows awaiting their last frames
        self._pending: list[tuple[int, float]] = []
        if self.sliced:
            self._track.reset(self._origin)

    @property
    def seconds(self) -> float:
        """Stream time: seconds of audio pushed (and gaps declared) since the start."""
        return self.total / self.sample_rate

    def gap(self, n_samples: int) -> None:
        """Declare ``n_samples`` of lost audio: the clock moves on, the window starts afresh.

        Hop boundaries inside the gap count as skipped, and so do windows that ended just
        before it but still waited for their last frames (the audio those needed is lost);
        the next windows hold only audio recorded after the gap (never audio from both
        sides of a hole).
        """
        n = int(n_samples)
        if n <= 0:
            return
        crossed = (self.total + n) // self.hop - self.total // self.hop
        self.hops_skipped += crossed + len(self._pending)
        self.total += n
        self._new_stretch()

    def flush(self) -> StreamUpdate:
        """End of the audio: score the windows still waiting for frames.

        Their last frames use the end reflection, as the last frames of a file do. Push no
        more audio afterwards without :meth:`reset`.
        """
        update = StreamUpdate()
        if self.sliced and self._pending:
            self._track.flush()
            self._score_pending(update)
        return update

    def pending_hops(self, n_samples: int) -> int:
        """Hop boundaries that pushing ``n_samples`` more would cross."""
        return (self.total + n_samples) // self.hop - self.total // self.hop

    def push(self, samples: np.ndarray, *, max_windows: int | None = None) -> StreamUpdate:
        """Append 32 kHz mono samples; score the windows of every hop boundary crossed.

        ``max_windows``: score at most this many of the boundaries crossed by this push (the
        latest ones) and count the others as skipped: a consumer that fell behind catches
        up without reordering audio. A full window of a log-mel file is scored once its last
        frame is known (~12.5 ms of audio later), which may be in the next push.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        update = StreamUpdate()
        n_new = self.pending_hops(x.size)
        skip = max(0, n_new - max_windows) if max_windows is not None else 0
        skipped = 0
        while x.size:
            to_boundary = self.hop - self.total % self.hop
            k = min(x.size, to_boundary)
            self._ring.write(x[:k])
            if self.sliced:
                self._track.push(x[:k])
            self.total += k
            x = x[k:]
            if self.sliced:
                self._score_pending(update)
            if self.total % self.hop:
                continue
            if skip:
                skip -= 1
                skipped += 1
                continue
            n = min(self.total - self._origin, self.window)
            if n < 2:
                skipped += 1
                continue
            if self.sliced and n == self.window and self._track.on_grid(self.total - n):
                self._pending.append((self.total, level_dbfs(self._ring.latest(n))))
                self._score_pending(update)
                continue
            seg = self._ring.latest(n)
            update.levels.append(level_dbfs(seg))
            t0 = time.perf_counter()
            scores = self.tagger.score(seg, (self.total - n) / self.sample_rate,
                                       self.total / self.sample_rate)
            update.inference_ms.append((time.perf_counter() - t0) * 1e3)
            update.scores.append(scores)
            self.hops_run += 1
        update.skipped = skipped
        self.hops_skipped += skipped
        return update

    def _score_pending(self, update: StreamUpdate) -> None:
        """Score the waiting full windows whose frames are all in the ring, oldest first."""
        while self._pending:
            end, level = self._pending[0]
            mel = self._track.window(end - self.window, self.window_frames)
            if mel is None:
                return
            self._pending.pop(0)
            update.levels.append(level)
            t0 = time.perf_counter()
            update.scores.append(self.tagger.score_frames(mel, (end - self.window) / self.sample_rate,
                                                          end / self.sample_rate))
            update.inference_ms.append((time.perf_counter() - t0) * 1e3)
            self.hops_run += 1


def score_wave(tagger: Tagger, wave: np.ndarray, window_s: float | None = None,
               hop_s: float = 1.0) -> list[WindowScores]:
    """File mode of the stream: every window a stream of ``wave`` scores, the same way.

    The end of ``wave`` is the end of the stretch (its last frames use the end reflection).
    """
    scorer = StreamingScorer(tagger, window_s, hop_s)
    return scorer.push(wave).scores + scorer.flush().scores
