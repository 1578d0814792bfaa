"""Sinks off the inference thread: the bounded queue of :class:`SinkSet` (drops counted
above the bound, a drain on close, copies queued), and a live run on the virtual microphone
with a sink that sleeps 2 s per event: the listener's hops and capture counters stay as
without sinks and every event reaches the sink."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.labels import Label
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.events import Event, EventConfig, EventTracker
from dymn_edge.runtime.microphone import Listener
from dymn_edge.runtime.sinks import EventSink, SinkSet
from dymn_edge.runtime.stream import StreamingScorer
from dymn_edge.runtime.tagger import Tagger

from .conftest import spoken_digits
from .test_microphone import _play_into_fifo, vmic  # noqa: F401 (fixture)

LABEL = Label(0, "/m/x", "x")


def _ev(k: int) -> Event:
    return Event("end", LABEL, float(k), float(k) + 0.5, 0.9)


class Gated(EventSink):
    """Blocks in its first event until ``gate`` is set; records everything it gets."""

    name = "gated"

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Event()
        self.events: list[float] = []
        self.clips: list[str | None] = []
        self.audio_ends: list[float] = []
        self.thread: str | None = None

    def audio(self, samples: np.ndarray, end: float) -> None:
        self.audio_ends.append(end)

    def event(self, ev: Event) -> None:
        self.thread = threading.current_thread().name
        self.entered.set()
        self.gate.wait(30)
        self.events.append(ev.start)
        self.clips.append(ev.clip)

    def close(self) -> dict[str, int]:
        return {"gated_events": len(self.events)}


def test_full_queue_drops_and_counts_and_close_drains(caplog: pytest.LogCaptureFixture) -> None:
    sink = Gated()
    sinks = SinkSet([sink], queue_events=3)
    sinks.event(_ev(0))
    assert sink.entered.wait(10)  # the worker holds event 0: three more may wait
    with caplog.at_level(logging.WARNING, logger="dymn_edge.runtime.sinks"):
        for k in range(1, 7):
            sinks.event(_ev(k))
    assert sinks.dropped_events == 3
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1  # said once
    sink.gate.set()
    counters = sinks.close()  # drains what was queued before closing the sink
    assert sink.events == [0.0, 1.0, 2.0, 3.0]
    assert counters == {"gated_events": 4, "sink_dropped_events": 3}
    assert sink.thread == "dymn-sinks"


def test_below_the_bound_nothing_is_lost_and_order_holds() -> None:
    sink = Gated()
    sink.gate.set()
    sinks = SinkSet([sink], queue_events=8)
    for k in range(8):
        sinks.audio(np.zeros(320, np.float32), 0.01 * (k + 1))
        sinks.event(_ev(k))
    assert sinks.close() == {"gated_events": 8}
    assert sink.events == [float(k) for k in range(8)]
    assert sink.audio_ends == pytest.approx([0.01 * (k + 1) for k in range(8)])


def test_audio_bound_drops_audio_and_queued_items_are_copies() -> None:
    class Keep(Gated):
        def audio(self, samples: np.ndarray, end: float) -> None:
            self.entered.set()
            self.gate.wait(30)
            self.audio_ends.append(float(samples[0]))

    sink = Keep()
    sinks = SinkSet([sink], queue_audio_seconds=0.1, sample_rate=32000)  # 3200 samples may wait
    buf = np.full(1600, 1.0, np.float32)
    sinks.audio(buf, 0.05)
    assert sink.entered.wait(10)
    for k in range(2, 5):  # the caller reuses its buffer: the sink must see what was passed
        buf[:] = k
        sinks.audio(buf, 0.05 * k)
    ev = _ev(9)
    sinks.event(ev)
    ev.clip = "changed by the caller"
    sink.gate.set()
    counters = sinks.close()
    assert sink.audio_ends == [1.0, 2.0, 3.0] and sink.clips == [None]
    assert counters == {"gated_events": 1, "sink_dropped_audio_s": 0.05}


def test_inline_sinks_run_on_the_caller_and_keep_filters_events() -> None:
    class Inline(Gated):
        inline = True

    inline, queued = Inline(), Gated()
    inline.gate.set()
    queued.gate.set()
    sinks = SinkSet([inline, queued], keep=lambda i: i != 1)
    sinks.event(_ev(0))
    sinks.event(Event("end", Label(1, "/m/y", "y"), 5.0, 6.0, 0.9))
    assert inline.events == [0.0] and inline.thread == threading.current_thread().name
    assert sinks.close() == {"gated_events": 1}
    assert queued.events == [0.0] and queued.thread == "dymn-sinks"


def test_failing_sink_is_retried_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(EventSink):
        name = "flaky"
        retries, retry_delay = 2, 0.0

        def __init__(self) -> None:
            self.calls = 0

        def event(self, ev: Event) -> None:
            self.calls += 1
            if self.calls % 4 != 3:  # event 0: fails twice, succeeds on the 3rd try
                raise OSError("disk busy")

    sink = Flaky()
    sinks = SinkSet([sink])
    with caplog.at_level(logging.ERROR, logger="dymn_edge.runtime.sinks"):
        sinks.event(_ev(0))
        sinks.event(_ev(1))  # calls 4, 5, 6: all fail
        assert sinks.close() == {"sink_failures": 1}
    assert sink.calls == 6
    assert len([r for r in caplog.records if "flaky sink failed in event" in r.message]) == 1


def test_close_waits_a_bounded_time(caplog: pytest.LogCaptureFixture) -> None:
    sink = Gated()
    sinks = SinkSet([sink], close_timeout=0.2)
    for k in range(3):
        sinks.event(_ev(k))
    assert sink.entered.wait(10)
    with caplog.at_level(logging.ERROR, logger="dymn_edge.runtime.sinks"):
        counters = sinks.close()
    assert counters == {"sink_unsent_events": 2}
    assert any("still busy" in r.message and "gated" in r.message for r in caplog.records)
    sink.gate.set()


# -- a live run on the virtual microphone ------------------------------------------------------


class Sleepy(EventSink):
    """The slow disk: 2 s per event."""

    name = "sleepy"

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float]] = []

    def event(self, ev: Event) -> None:
        time.sleep(2.0)
        self.events.append((ev.kind, ev.label.index, ev.start))


def _live_run(env: dict[str, str], model: Path, wave: np.ndarray, seconds: float,
              sinks: SinkSet | None) -> dict:
    tagger = Tagger(load_engine(model, threads=1))
    hop = 0.25
    tracker = EventTracker(tagger.labels, EventConfig(on=0.8, off=0.5), hop)
    lis = Listener(StreamingScorer(tagger, 1.0, hop), tracker, device="pulse", sinks=sinks)
    gaps: list[float] = []
    seen: list[tuple[str, int, float]] = []
    last = [0.0]

    def on_hop(scores, events, stats) -> None:
        now = time.monotonic()
        if last[0]:
            gaps.append(now - last[0])
        last[0] = now
        seen.extend((e.kind, e.label.index, e.start) for e in events)

    stop = threading.Event()
    writer = threading.Thread(target=_play_into_fifo, args=(env, wave, None), kwargs={"stop": stop}, daemon=True)
    writer.start()
    try:
        stats = lis.run(duration=seconds, on_hop=on_hop)
        seen.extend((e.kind, e.label.index, e.start) for e in lis.finish())
    finally:
        stop.set()
        writer.join(5)
    return {"stats": stats, "gaps": gaps, "events": seen}


@pytest.mark.mic
def test_slow_sink_does_not_stall_the_listener(vmic: dict[str, str], fsdd_onnx: Path, fsdd_dir: Path,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("PULSE_SERVER", "PULSE_SOURCE"):  # PortAudio's pulse device reads them at open
        monkeypatch.setenv(k, vmic[k])
    digits = [3, 9, 7]
    wave, _ = spoken_digits(fsdd_dir, digits, lead=0.5, gap=1.0)
    seconds = round(wave.size / 32000 + 1.0, 2)
    base = _live_run(vmic, fsdd_onnx, wave, seconds, None)
    sleepy = Sleepy()
    slow = _live_run(vmic, fsdd_onnx, wave, seconds, SinkSet([sleepy], close_timeout=60))
    b, s = base["stats"], slow["stats"]
    assert len(base["events"]) >= 2 * len(digits)  # the digits were heard: the sink had work
    # the capture and the hops as without sinks: nothing dropped, no hop skipped, no stall
    # (an inline 2 s sink would skip 8 hops and leave a 2 s gap per event)
    assert (s.overflows, s.dropped_seconds) == (b.overflows, b.dropped_seconds) == (0, 0.0)
    assert s.hops_run + s.hops_skipped == b.hops_run + b.hops_skipped
    assert s.hops_skipped <= b.hops_skipped + 2, (s.hops_skipped, b.hops_skipped)
    assert max(slow["gaps"]) < 2.0, sorted(slow["gaps"])[-5:]
    # every event reached the sleepy sink, in order (its backlog drained at the stop)
    assert sleepy.events == slow["events"] and len(sleepy.events) >= 2 * len(digits)
    assert "sink_dropped_events" not in s.extra and "sink_unsent_events" not in s.extra
