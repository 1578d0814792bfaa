"""Streaming scorer: a sliding window over 32 kHz audio, scored every hop.

openWakeWord / silero-vad style: audio arrives in chunks of any size; a ring buffer keeps
the last ``window`` seconds; every ``hop`` seconds of *audio* (not wall time) the window that
ends there is scored. Hop boundaries sit at multiples of the hop counted in samples since
the stream started, so the windows and their scores do not depend on how the audio was
chunked. Until a full window has arrived the scorer runs on what is there, once at least
one hop has arrived, padded exactly as the file tagger pads short audio (centred, with the
noise floor): the stream's window ending at ``t`` equals the file tagger's window
``[t - window, t]``.

Event logic (smoothing, hysteresis) lives in :mod:`dymn_edge.runtime.events`; capture and
resampling in :mod:`dymn_edge.runtime.microphone`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.tagger import Tagger, WindowScores

log = logging.getLogger(__name__)

__all__ = ["AudioRing", "StreamingScorer", "StreamUpdate"]


class AudioRing:
    """Fixed-capacity float32 ring buffer holding the most recent samples."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._pos = 0  # next write position
        self._filled = 0

    def clear(self) -> None:
        self._pos = 0
        self._filled = 0

    @property
    def filled(self) -> int:
        return self._filled

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if x.size >= self.capacity:
            self._buf[:] = x[-self.capacity:]
            self._pos = 0
            self._filled = self.capacity
            return
        end = self._pos + x.size
        if end <= self.capacity:
            self._buf[self._pos:end] = x
        else:
            k = self.capacity - self._pos
            self._buf[self._pos:] = x[:k]
            self._buf[:end - self.capacity] = x[k:]
        self._pos = end % self.capacity
        self._filled = min(self.capacity, self._filled + x.size)

    def latest(self, n: int) -> np.ndarray:
        """A copy of the last ``n`` samples, oldest first."""
        n = min(int(n), self._filled)
        start = self._pos - n
        if start >= 0:
            return self._buf[start:self._pos].copy()
        return np.concatenate((self._buf[start:], self._buf[:self._pos]))


@dataclass
class StreamUpdate:
    """What one ``push`` produced: scored windows (in order) and hops skipped on request."""

    scores: list[WindowScores] = field(default_factory=list)
    skipped: int = 0
    inference_ms: list[float] = field(default_factory=list)


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
        self.reset()

    def reset(self) -> None:
        """Forget all audio and start a new stream at time 0."""
        self._ring.clear()
        self.total = 0  # samples since the stream started (gaps included)
        self._origin = 0  # first sample of the current contiguous stretch
        self.hops_run = 0
        self.hops_skipped = 0

    @property
    def seconds(self) -> float:
        """Stream time: seconds of audio pushed (and gaps declared) since the start."""
        return self.total / self.sample_rate

    def gap(self, n_samples: int) -> None:
        """Declare ``n_samples`` of lost audio: the clock moves on, the window starts afresh.

        Hop boundaries inside the gap count as skipped; the next windows hold only audio
        recorded after the gap (never audio from both sides of a hole).
        """
        n = int(n_samples)
        if n <= 0:
            return
        crossed = (self.total + n) // self.hop - self.total // self.hop
        self.hops_skipped += crossed
        self.total += n
        self._origin = self.total
        self._ring.clear()

    def pending_hops(self, n_samples: int) -> int:
        """Hop boundaries that pushing ``n_samples`` more would cross."""
        return (self.total + n_samples) // self.hop - self.total // self.hop

    def push(self, samples: np.ndarray, *, max_windows: int | None = None) -> StreamUpdate:
        """Append 32 kHz mono samples; score the windows of every hop boundary crossed.

        ``max_windows``: score at most this many of the boundaries crossed by this push (the
        latest ones) and count the others as skipped: a consumer that fell behind catches
        up without reordering audio.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        update = StreamUpdate()
        n_new = self.pending_hops(x.size)
        skip = max(0, n_new - max_windows) if max_windows is not None else 0
        while x.size:
            to_boundary = self.hop - self.total % self.hop
            k = min(x.size, to_boundary)
            self._ring.write(x[:k])
            self.total += k
            x = x[k:]
            if self.total % self.hop:
                continue
            if skip:
                skip -= 1
                self.hops_skipped += 1
                continue
            n = min(self.total - self._origin, self.window)
            if n < 2:
                self.hops_skipped += 1
                continue
            seg = self._ring.latest(n)
            t0 = time.perf_counter()
            scores = self.tagger.score(seg, (self.total - n) / self.sample_rate,
                                       self.total / self.sample_rate)
            update.inference_ms.append((time.perf_counter() - t0) * 1e3)
            update.scores.append(scores)
            self.hops_run += 1
        update.skipped = max(0, n_new - len(update.scores))
        return update
