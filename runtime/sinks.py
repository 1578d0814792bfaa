"""Where events go besides the terminal: the sink interface the listener calls.

The event logic (:mod:`dymn_edge.runtime.events`) only decides *when* an event starts and
ends; what a device does with it (SQLite log, FLAC clips, MQTT) lives in sinks, so adding
one never touches the tracker. The listener calls, on its consumer thread:

- ``audio(samples, end)`` with every chunk of 32 kHz audio it scores (``end`` = stream time
  in seconds at the chunk's last sample; clips keep a ring of it),
- ``event(ev)`` on each onset ("start") and offset ("end"), in order,
- ``reopen()`` after SIGHUP (log rotation), ``close()`` once at the end; ``close`` returns
  counters that go into the run's summary.

:class:`SinkSet` fans out to several sinks; one failing sink is logged (once per kind of
failure) and never stops tagging or the other sinks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from dymn_edge.runtime.events import Event

log = logging.getLogger(__name__)

__all__ = ["EventSink", "SinkSet"]


class EventSink:
    """Base class: every hook is optional (a no-op here)."""

    name = "sink"

    def audio(self, samples: np.ndarray, end: float) -> None:
        """32 kHz mono audio whose last sample is at stream time ``end`` (s)."""

    def event(self, ev: Event) -> None:
        """An onset (``ev.kind == "start"``) or offset (``"end"``)."""

    def reopen(self) -> None:
        """Re-open files (SIGHUP, e.g. after log rotation)."""

    def close(self) -> dict[str, Any]:
        """Flush and release; the counters returned go into the summary."""
        return {}


class SinkSet(EventSink):
    """Several sinks called in order; exceptions are contained per sink."""

    name = "sinks"

    def __init__(self, sinks: Sequence[EventSink] = ()) -> None:
        self.sinks = list(sinks)
        self.failures = 0
        self._reported: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _guard(self, sink: EventSink, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:  # a sink must never stop the listener
            self.failures += 1
            key = (sink.name, f"{what}:{type(exc).__name__}")
            if key not in self._reported:
                self._reported.add(key)
                log.error("%s sink failed in %s (%s: %s); tagging goes on (reported once)",
                          sink.name, what, type(exc).__name__, exc)
            return None

    def audio(self, samples: np.ndarray, end: float) -> None:
        for s in self.sinks:
            self._guard(s, "audio", s.audio, samples, end)

    def event(self, ev: Event) -> None:
        for s in self.sinks:
            self._guard(s, "event", s.event, ev)

    def reopen(self) -> None:
        for s in self.sinks:
            self._guard(s, "reopen", s.reopen)

    def close(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.sinks:
            counters = self._guard(s, "close", s.close)
            if counters:
                out.update(counters)
        if self.failures:
            out["sink_failures"] = self.failures
        return out
