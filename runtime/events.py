"""From per-hop scores to events: per-label smoothing and hysteresis.

A sliding window re-reports a sound in every window that contains it (EfficientAT users
saw a 10 s buffer shifted by 2 s report the same event five times). Here each label runs
a small state machine over its smoothed score:

- smoothing: an exponential moving average (``ema``, weight ``alpha`` on the new hop) or
  a running median over ``median`` hops (removes one-hop spikes at the cost of
  ``median // 2`` hops of delay), or none;
- onset when the smoothed score reaches ``on``; the event becomes real (``start``) only
  once it has stayed at or above ``off`` for ``min_duration`` seconds, so flicker shorter
  than that never becomes an event;
- offset when the smoothed score falls below ``off`` (< ``on``): a sound whose score
  wobbles between the two thresholds stays one event.

Times resolve to the hop: an event starts where the new audio of its first active hop
starts (window end - hop) and ends at the end of its last active hop's window.

An event carries two peaks: the smoothed one (what crossed the thresholds) and the raw one
(the highest window score the model gave): smoothing lowers a short, sure detection
(a single 0.99 window reads 0.70 after an ema of 0.7), so a log keeps both.

Level gate: a softmax head has no "nothing" class, so silence and hum are still some
class, with confidence. With ``min_level_dbfs`` set, a window whose audio RMS is below that
floor counts as all-zero scores (no onset; a running event fades out as after silence),
as keyword spotters gate on energy. The level is measured by the caller on the window's
own audio (:func:`level_dbfs`); scoring never sees the gate.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.labels import Label

__all__ = ["EventConfig", "Event", "EventTracker", "level_dbfs", "SOFTMAX_MIN_LEVEL_DBFS"]

#: Default level gate (dBFS, RMS re full scale 1.0) for softmax heads; see the README
#: "Run it as a device" for how it was measured on FSDD speech, silence and low noise.
SOFTMAX_MIN_LEVEL_DBFS = -60.0
#: Longest --min-duration (s): an onset that must last more than a day is a typo.
MAX_MIN_DURATION_S = 86400.0


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level in dBFS (20 log10 RMS, full scale 1.0); -inf for digital silence."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return float("-inf")
    ms = float(np.mean(x * x))
    return 10.0 * math.log10(ms) if ms > 0 else float("-inf")


@dataclass(frozen=True)
class EventConfig:
    """Thresholds and smoothing of the event tracker (see the module docstring)."""

    on: float = 0.5
    off: float = 0.3
    min_duration: float = 0.0  # seconds an onset must last before it is reported
    smoothing: str = "ema"  # "ema" | "median" | "none"
    alpha: float = 0.7  # ema weight of the newest hop (1 = no smoothing)
    median: int = 3  # hops in the running median
    min_level_dbfs: float | None = None  # level gate: windows below it score nothing (None = off)

    def validate(self) -> "EventConfig":
        if not 0.0 < self.on <= 1.0:
            raise DymnEdgeError(f"onset threshold must be in (0, 1], got {self.on:g}")
        if not 0.0 <= self.off <= self.on:
            raise DymnEdgeError(f"offset threshold must be in [0, on={self.on:g}], got {self.off:g}")
        if not 0 <= self.min_duration <= MAX_MIN_DURATION_S:
            raise DymnEdgeError(f"--min-duration must be between 0 and {MAX_MIN_DURATION_S:g} s (a "
                                f"day), got {self.min_duration:g}")
        if self.smoothing not in ("ema", "median", "none"):
            raise DymnEdgeError(f"smoothing must be ema, median or none, got '{self.smoothing}'")
        if not 0.0 < self.alpha <= 1.0:
            raise DymnEdgeError(f"ema alpha must be in (0, 1], got {self.alpha:g}")
        if self.median < 1:
            raise DymnEdgeError(f"median length must be >= 1 hop, got {self.median}")
        if self.min_level_dbfs is not None and not (math.isfinite(self.min_level_dbfs)
                                                    and self.min_level_dbfs <= 0):
            raise DymnEdgeError(f"level floor must be a finite dBFS value <= 0, got {self.min_level_dbfs:g}")
        return self


@dataclass
class Event:
    """One change: ``kind`` is "start" or "end"; ``end`` is set on "end" changes."""

    kind: str
    label: Label
    start: float
    end: float | None
    probability: float  # peak smoothed score so far (what crossed the thresholds)
    mean: float | None = None  # mean smoothed score over the event's hops (set on "end")
    peak_raw: float | None = None  # peak raw window score so far (the model's own output)
    # set by the listener (it knows the wall clock), for sinks: UTC epoch seconds, clip file
    start_utc: float | None = None
    end_utc: float | None = None
    clip: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


class EventTracker:
    """Per-label smoothing + hysteresis over a sequence of hop scores."""

    def __init__(self, labels: Sequence[Label], config: EventConfig = EventConfig(),
                 hop_s: float = 1.0, per_label: "np.ndarray | None" = None) -> None:
        """``per_label``: optional (n_labels, 3) array of on / off / min_duration per label
        (from :mod:`dymn_edge.runtime.device.thresholds`) replacing the global thresholds."""
        self.labels = list(labels)
        self.config = config.validate()
        self.hop_s = float(hop_s)
        n = len(self.labels)
        base = np.array([[config.on, config.off, config.min_duration]] * n, dtype=np.float64).reshape(n, 3)
        if per_label is not None:
            base = np.asarray(per_label, dtype=np.float64)
            if base.shape != (n, 3):
                raise DymnEdgeError(f"per-label thresholds need shape ({n}, 3), got {base.shape}")
        self._on, self._off, self._min = base[:, 0].copy(), base[:, 1].copy(), base[:, 2].copy()
        self.reset()

    def reset(self) -> None:
        n = len(self.labels)
        self.smoothed = np.zeros(n, dtype=np.float64)
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=self.config.median)
        self._first = True
        self._pending = np.full(n, np.nan)  # onset time of a not-yet-confirmed event
        self._active = np.zeros(n, dtype=bool)  # confirmed (reported) events
        self._start = np.zeros(n, dtype=np.float64)
        self._peak = np.zeros(n, dtype=np.float64)
        self._peak_raw = np.zeros(n, dtype=np.float64)
        self.gated = False  # the last window was below the level floor
        self.level: float | None = None  # the last window's audio level (dBFS), if given
        self._last_end = np.zeros(n, dtype=np.float64)
        self._sum = np.zeros(n, dtype=np.float64)  # smoothed scores summed over the event
        self._hops = np.zeros(n, dtype=np.int64)

    def _smooth(self, p: np.ndarray) -> np.ndarray:
        c = self.config
        if c.smoothing == "median":
            self._history.append(p)
            return np.median(np.stack(self._history), axis=0)
        if c.smoothing == "ema" and not self._first:
            return c.alpha * p + (1.0 - c.alpha) * self.smoothed
        return p

    def below_floor(self, level: float | None) -> bool:
        """Whether a window of this level (dBFS) is gated (no floor or no level: never)."""
        floor = self.config.min_level_dbfs
        return floor is not None and level is not None and level < floor

    def update(self, end: float, probabilities: np.ndarray, level: float | None = None) -> list[Event]:
        """Feed the scores of the window ending at ``end`` (s) and the window's audio level
        (dBFS, for the level gate); return the event changes."""
        p = np.asarray(probabilities, dtype=np.float64)
        self.level = level
        self.gated = self.below_floor(level)
        if self.gated:
            p = np.zeros_like(p)
        self.smoothed = self._smooth(p)
        self._first = False
        s = self.smoothed
        hop_start = max(0.0, end - self.hop_s)
        changes: list[Event] = []
        above_on = s >= self._on
        above_off = s >= self._off
        # new onsets
        starting = above_on & np.isnan(self._pending) & ~self._active
        self._pending[starting] = hop_start
        self._peak[starting] = 0.0
        self._peak_raw[starting] = 0.0
        self._sum[starting] = 0.0
        self._hops[starting] = 0
        tracking = ~np.isnan(self._pending) | self._active
        self._peak[tracking] = np.maximum(self._peak[tracking], s[tracking])
        self._peak_raw[tracking] = np.maximum(self._peak_raw[tracking], p[tracking])
        counted = tracking & above_off
        self._sum[counted] += s[counted]
        self._hops[counted] += 1
        self._last_end[tracking & above_off] = end
        # pending onsets that dropped out before min_duration: flicker, forget it
        dropped = ~np.isnan(self._pending) & ~self._active & ~above_off
        self._pending[dropped] = np.nan
        # pending onsets that lasted long enough: report the start
        confirm = (~np.isnan(self._pending) & ~self._active & above_off
                   & (end - self._pending >= self._min - 1e-9))
        for i in np.flatnonzero(confirm):
            self._active[i] = True
            self._start[i] = self._pending[i]
            changes.append(Event("start", self.labels[i], float(self._start[i]), None,
                                 float(self._peak[i]), peak_raw=float(self._peak_raw[i])))
        # offsets
        ending = self._active & ~above_off
        for i in np.flatnonzero(ending):
            changes.append(Event("end", self.labels[i], float(self._start[i]),
                                 float(self._last_end[i]), float(self._peak[i]), self._mean(i),
                                 peak_raw=float(self._peak_raw[i])))
            self._active[i] = False
            self._pending[i] = np.nan
        return changes

    def finish(self, end: float | None = None) -> list[Event]:
        """Close the events still open when the stream stops (they end at the last hop)."""
        changes = []
        for i in np.flatnonzero(self._active):
            stop = float(self._last_end[i]) if end is None else float(end)
            changes.append(Event("end", self.labels[i], float(self._start[i]), stop,
                                 float(self._peak[i]), self._mean(i), peak_raw=float(self._peak_raw[i])))
        self._active[:] = False
        self._pending[:] = np.nan
        return changes

    def _mean(self, i: int) -> float:
        return float(self._sum[i] / self._hops[i]) if self._hops[i] else float(self._peak[i])

    @property
    def active(self) -> list[Label]:
        """Labels with an event in progress."""
        return [self.labels[i] for i in np.flatnonzero(self._active)]
