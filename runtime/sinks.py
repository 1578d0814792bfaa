"""Where events go: the sink interface the listener calls, and the worker that keeps slow
sinks off the inference thread.

The event logic (:mod:`dymn_edge.runtime.events`) only decides *when* an event starts and
ends; what is done with it (the terminal table or JSON Lines, a SQLite log, FLAC clips,
MQTT) lives in sinks, so adding one never touches the tracker. A sink may implement:

- ``audio(samples, end)`` with every chunk of 32 kHz audio the listener scores (``end`` =
  stream time in seconds at the chunk's last sample; clips keep a ring of it),
- ``hop(scores, events, stats)`` once per scored hop, just before that hop's events
  (``inline`` sinks only: the live terminal line, ``--every-hop``),
- ``event(ev)`` on each onset ("start") and offset ("end"), in order,
- ``reopen()`` after SIGHUP (log rotation), ``close()`` once at the end (its counters go
  into the run's summary), ``summary(stats)`` with the finished stats (``inline`` only).

:class:`SinkSet` fans out to several sinks and contains failures per sink (logged once per
kind of failure; tagging and the other sinks go on). Sinks marked ``inline`` (the terminal
output, whose lines interleave with the hop lines) run on the caller's thread; all others
run, in list order, on one worker thread behind a bounded queue, so a FLAC encode, a
retention walk or a ``synchronous=FULL`` commit on a slow SD card never stalls inference
(the capture ring would overflow). One worker, not one per sink: the clips sink sets
``ev.clip`` before the database sink writes the row. What is queued is a copy (the audio
chunk, the event), so the worker never reads memory the listener reuses.

A full queue drops the new item and counts it (said once, in the summary as
``sink_dropped_events`` / ``sink_dropped_audio_s``; the clips ring then holds silence for
the dropped audio); a sink call slower than its ``slow_s`` is reported once (Python cannot
interrupt it; the queue absorbs it); an event call that raises is retried ``retries``
times. ``close()`` drains the queue: nothing is lost on a normal stop, and the wait is
bounded (``close_timeout``): what is still queued then is counted as ``sink_unsent_events``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dymn_edge.runtime.events import Event

log = logging.getLogger(__name__)

__all__ = ["EventSink", "SinkSet", "QUEUE_EVENTS", "QUEUE_AUDIO_SECONDS", "CLOSE_TIMEOUT_S"]

#: Events that may wait for the worker before new ones are dropped.
QUEUE_EVENTS = 256
#: Seconds of audio that may wait for the worker (32 kHz float32: 128 kB a second).
QUEUE_AUDIO_SECONDS = 60.0
#: Longest wait for the worker at the stop (systemd's TimeoutStopSec is 30 s).
CLOSE_TIMEOUT_S = 15.0


class EventSink:
    """Base class: every hook is optional (a no-op here); the class attributes are the
    sink's policy in a :class:`SinkSet`."""

    name = "sink"
    #: Called on the listener's thread (cheap output whose order with hop lines matters);
    #: otherwise on the worker thread.
    inline = False
    #: An ``event`` call that raises is tried this many more times, ``retry_delay`` s apart.
    retries = 0
    retry_delay = 0.5
    #: A call slower than this (seconds) is reported once.
    slow_s = 5.0
    #: A failure is logged once and counted; False: it ends the run (the terminal output:
    #: ``dymn-listen | head`` stops when the pipe closes).
    contained = True

    def audio(self, samples: np.ndarray, end: float) -> None:
        """32 kHz mono audio whose last sample is at stream time ``end`` (s)."""

    def hop(self, scores: Any, events: Sequence[Event], stats: Any) -> None:
        """One scored hop and the events it produced (they reach :meth:`event` next)."""

    def event(self, ev: Event) -> None:
        """An onset (``ev.kind == "start"``) or offset (``"end"``)."""

    def reopen(self) -> None:
        """Re-open files (SIGHUP, e.g. after log rotation)."""

    def close(self) -> dict[str, Any]:
        """Flush and release; the counters returned go into the summary."""
        return {}

    def summary(self, stats: Any) -> None:
        """The run is over and ``stats`` holds every counter (the sinks' too)."""


def _overrides(sink: EventSink, hook: str) -> bool:
    return getattr(type(sink), hook) is not getattr(EventSink, hook)


class SinkSet(EventSink):
    """Several sinks: ``inline`` ones called in order on the caller's thread, the others in
    order on one worker thread behind a bounded queue (``threaded=False``: all inline).
    ``keep(label_index)`` filters the events every sink sees (``--include`` / ``--exclude``)."""

    name = "sinks"

    def __init__(self, sinks: Sequence[EventSink] = (), *, keep: Callable[[int], bool] | None = None,
                 queue_events: int = QUEUE_EVENTS, queue_audio_seconds: float = QUEUE_AUDIO_SECONDS,
                 sample_rate: int = 32000, close_timeout: float = CLOSE_TIMEOUT_S, threaded: bool = True) -> None:
        if queue_events < 1 or not queue_audio_seconds >= 0:
            raise ValueError(f"queue bounds must be positive (events {queue_events}, audio {queue_audio_seconds} s)")
        self.sinks = list(sinks)
        self.keep = keep
        self._now = [s for s in self.sinks if s.inline or not threaded]
        self._later = [s for s in self.sinks if s not in self._now]
        self._audio_later = any(_overrides(s, "audio") for s in self._later)
        self.queue_events = int(queue_events)
        self.queue_samples = int(queue_audio_seconds * sample_rate)
        self.sample_rate = int(sample_rate)
        self.close_timeout = float(close_timeout)
        self.failures = 0
        self.dropped_events = 0
        self.dropped_samples = 0
        self._reported: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # failure counters (both threads)
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._waiting_events = 0
        self._waiting_samples = 0
        self._busy: tuple[str, float] | None = None  # (sink, since) the worker is in
        self._closed_counters: dict[str, Any] = {}
        self._worker: threading.Thread | None = None
        if self._later:
            self._worker = threading.Thread(target=self._work, name="dymn-sinks", daemon=True)
            self._worker.start()

    def __bool__(self) -> bool:
        return bool(self.sinks)

    # -- the caller's side ------------------------------------------------------------------
    def audio(self, samples: np.ndarray, end: float) -> None:
        for s in self._now:
            self._call(s, "audio", s.audio, samples, end)
        if self._audio_later:
            chunk = np.array(samples, dtype=np.float32, copy=True)  # the listener reuses its buffers
            self._put(("audio", chunk, float(end)), samples=chunk.size)

    def hop(self, scores: Any, events: Sequence[Event], stats: Any) -> None:
        for s in self._now:
            self._call(s, "hop", s.hop, scores, events, stats)

    def event(self, ev: Event) -> None:
        if self.keep is not None and not self.keep(ev.label.index):
            return
        for s in self._now:
            self._call(s, "event", s.event, ev)
        if self._later:
            self._put(("event", dataclasses.replace(ev)), events=1)

    def reopen(self) -> None:
        for s in self._now:
            self._call(s, "reopen", s.reopen)
        if self._later:
            self._put(("reopen",))

    def summary(self, stats: Any) -> None:
        for s in self._now:
            self._call(s, "summary", s.summary, stats)

    def close(self) -> dict[str, Any]:
        """Drain the queue (at most ``close_timeout`` s), close every sink, return the counters."""
        out: dict[str, Any] = {}
        if self._worker is not None:
            self._put(("close",))
            self._worker.join(self.close_timeout)
            if self._worker.is_alive():
                with self._cv:
                    unsent = self._waiting_events
                    busy = self._busy
                log.error("sinks: still busy after %.0f s at the stop (%s); %d queued event(s) not "
                          "written", self.close_timeout, busy[0] if busy else "closing", unsent)
                out["sink_unsent_events"] = unsent
            out.update(self._closed_counters)
        for s in self._now:
            counters = self._call(s, "close", s.close)
            if counters:
                out.update(counters)
        if self.dropped_events:
            out["sink_dropped_events"] = self.dropped_events
        if self.dropped_samples:
            out["sink_dropped_audio_s"] = round(self.dropped_samples / self.sample_rate, 3)
        if self.failures:
            out["sink_failures"] = self.failures
        return out

    def _put(self, item: tuple[Any, ...], *, events: int = 0, samples: int = 0) -> None:
        """Queue ``item`` for the worker, or drop and count it when its bound is reached."""
        with self._cv:
            full = ((events and self._waiting_events + events > self.queue_events)
                    or (samples and self._waiting_samples + samples > self.queue_samples))
            if not full:
                self._waiting_events += events
                self._waiting_samples += samples
                self._queue.append(item)
                self._cv.notify()
                return
            self.dropped_events += events
            self.dropped_samples += samples
            busy = self._busy
        what = "event" if events else "audio"
        if ("queue", what) not in self._reported:
            self._reported.add(("queue", what))
            since = f" ({busy[0]} sink busy for {time.monotonic() - busy[1]:.1f} s)" if busy else ""
            log.warning("sinks: queue full (%d events / %.0f s of audio waiting)%s: new %s dropped, "
                        "counted in the summary; tagging goes on (said once)", self.queue_events,
                        self.queue_samples / self.sample_rate, since, what)

    # -- the worker's side ------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                item = self._queue.popleft()
                if item[0] == "event":
                    self._waiting_events -= 1
                elif item[0] == "audio":
                    self._waiting_samples -= item[1].size
            kind = item[0]
            if kind == "close":
                counters: dict[str, Any] = {}
                for s in self._later:
                    counters.update(self._call(s, "close", s.close) or {})
                self._closed_counters = counters
                return
            for s in self._later:
                fn = getattr(s, kind)
                self._call(s, kind, fn, *item[1:])

    def _call(self, sink: EventSink, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with the sink's policy: contained failures, retries, slow calls said once."""
        tries = 1 + (max(0, int(sink.retries)) if what == "event" else 0)
        for attempt in range(tries):
            t0 = time.monotonic()
            if sink not in self._now:
                self._busy = (sink.name, t0)
            try:
                return fn(*args)
            except Exception as exc:  # a sink must never stop the listener
                if not sink.contained:
                    raise
                if attempt + 1 < tries:
                    log.debug("%s sink failed in %s (%s); retrying", sink.name, what, exc)
                    time.sleep(sink.retry_delay)
                    continue
                self._failed(sink, what, exc)
                return None
            finally:
                self._busy = None
                self._note_slow(sink, what, time.monotonic() - t0)
        return None

    def _failed(self, sink: EventSink, what: str, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
            key = (sink.name, f"{what}:{type(exc).__name__}")
            first = key not in self._reported
            self._reported.add(key)
        if first:
            log.error("%s sink failed in %s (%s: %s); tagging goes on (reported once)",
                      sink.name, what, type(exc).__name__, exc)

    def _note_slow(self, sink: EventSink, what: str, took: float) -> None:
        if took <= sink.slow_s or what == "close":
            return
        with self._lock:
            first = (sink.name, "slow") not in self._reported
            self._reported.add((sink.name, "slow"))
        if first:
            where = "on the listener's thread" if sink in self._now else "queued, off the inference thread"
            log.warning("%s sink took %.1f s in %s (over %.0f s; %s; said once)", sink.name, took, what,
                        sink.slow_s, where)
