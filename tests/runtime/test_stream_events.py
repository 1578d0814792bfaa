"""Streaming scorer (chunk-size invariance, equality with file windows) and the event tracker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dymn_edge.audio import read_audio
from dymn_edge.labels import Label
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.events import EventConfig, EventTracker
from dymn_edge.runtime.stream import AudioRing, StreamingScorer
from dymn_edge.runtime.tagger import Tagger

from .conftest import spoken_digits


@pytest.fixture(scope="module")
def tagger(fsdd_model: Path) -> Tagger:
    return Tagger(load_engine(fsdd_model, threads=1))


def _run(scorer: StreamingScorer, wave: np.ndarray, block: int) -> np.ndarray:
    rows = []
    for i in range(0, len(wave), block):
        for s in scorer.push(wave[i:i + block]).scores:
            rows.append([s.start, s.end, *s.probabilities])
    return np.array(rows)


def test_chunk_size_does_not_change_windows_or_scores(tagger: Tagger, metro_wav: Path) -> None:
    wave = read_audio(metro_wav)[: 3 * 32000 + 4321]
    ref = _run(StreamingScorer(tagger, 1.0, 0.5), wave, 32000)
    assert len(ref) == 6
    np.testing.assert_allclose(ref[:, :2], [[0, .5], [0, 1], [.5, 1.5], [1, 2], [1.5, 2.5], [2, 3]])
    for block in (1, 317, 3200):
        got = _run(StreamingScorer(tagger, 1.0, 0.5), wave, block)
        np.testing.assert_array_equal(got, ref)


def test_stream_windows_equal_file_windows(tagger: Tagger, metro_wav: Path) -> None:
    wave = read_audio(metro_wav)[: 4 * 32000]
    stream = _run(StreamingScorer(tagger, 1.0, 0.5), wave, 4000)
    files = tagger.tag_windows(wave, 1.0, 0.5)
    by_span = {(round(r[0], 6), round(r[1], 6)): r[2:] for r in stream}
    for f in files:
        np.testing.assert_array_equal(by_span[(round(f.start, 6), round(f.end, 6))], f.probabilities)


def test_warmup_reset_gap_and_skip(tagger: Tagger) -> None:
    sr = 32000
    s = StreamingScorer(tagger, 1.0, 0.25)
    assert s.push(np.zeros(sr // 8, np.float32)).scores == []  # less than a hop: nothing yet
    first = s.push(np.zeros(sr // 8, np.float32)).scores
    assert len(first) == 1 and first[0].padded and first[0].end == 0.25
    upd = s.push(np.zeros(sr, np.float32), max_windows=1)  # 4 boundaries, only the newest scored
    assert len(upd.scores) == 1 and upd.skipped == 3 and upd.scores[0].end == 1.25
    s.gap(sr // 2)  # two lost hops
    assert s.hops_skipped == 5 and s.seconds == 1.75
    after = s.push(np.zeros(sr // 4, np.float32)).scores
    assert after[0].start == 1.75 and after[0].padded  # no window spans the hole
    assert s.hops_run + s.hops_skipped == int(s.seconds / s.hop_s)
    s.reset()
    assert s.seconds == 0 and s.hops_run == 0


def test_ring_buffer_keeps_order() -> None:
    ring = AudioRing(5)
    ring.write(np.arange(3))
    ring.write(np.arange(3, 9))
    np.testing.assert_array_equal(ring.latest(5), [4, 5, 6, 7, 8])
    ring.write(np.arange(9, 11))
    np.testing.assert_array_equal(ring.latest(3), [8, 9, 10])
    ring.write(np.arange(100))
    np.testing.assert_array_equal(ring.latest(5), np.arange(95, 100))


def test_spoken_digits_become_events_in_order(fsdd_onnx: Path, fsdd_dir: Path) -> None:
    tagger = Tagger(load_engine(fsdd_onnx, threads=1))
    digits = [3, 9, 1, 7]
    wave, centres = spoken_digits(fsdd_dir, digits)
    scorer = StreamingScorer(tagger, 1.0, 0.25)
    tracker = EventTracker(tagger.labels, EventConfig(on=0.8, off=0.5), hop_s=0.25)
    starts = []
    for s in scorer.push(wave).scores:
        starts += [e for e in tracker.update(s.end, s.probabilities) if e.kind == "start"]
    _assert_digits_in_order(digits, centres, [(e.label.index, e.start) for e in starts])


def _assert_digits_in_order(digits: list[int], centres: list[float], events: list[tuple[int, float]]) -> None:
    """Each spoken digit has a start event within 1 s of where it was spoken, in order."""
    pos = 0
    for d, c in zip(digits, centres):
        while pos < len(events) and not (events[pos][0] == d and abs(events[pos][1] - c) <= 1.0):
            pos += 1
        assert pos < len(events), f"digit {d} at {c:.2f} s not found in order in {events}"
        pos += 1


# -- events from synthetic score sequences ------------------------------------------------

LABELS = [Label(0, "/m/a", "dog"), Label(1, "/m/b", "siren")]


def _feed(tracker: EventTracker, seq: list[float], hop: float = 1.0) -> list:
    out = []
    for k, p in enumerate(seq, start=1):
        out += tracker.update(k * hop, np.array([p, 0.0]))
    return out + tracker.finish()


def test_continuous_sound_is_one_event() -> None:
    seq = [0.0] * 4 + [0.9, 0.8, 0.45, 0.7, 0.9, 0.35, 0.85] + [0.0] * 4  # wobbles, never below off
    events = _feed(EventTracker(LABELS, EventConfig(on=0.5, off=0.3, smoothing="none")), seq)
    assert [(e.kind, e.label.display_name) for e in events] == [("start", "dog"), ("end", "dog")]
    assert events[1].start == 4.0 and events[1].end == 11.0  # hops 5..11 active
    assert events[1].probability == pytest.approx(0.9)


def test_flicker_below_min_duration_is_no_event() -> None:
    seq = [0.0, 0.9, 0.0, 0.0, 0.9, 0.1, 0.0, 0.95, 0.0]
    cfg = EventConfig(on=0.5, off=0.3, min_duration=2.0, smoothing="none")
    assert _feed(EventTracker(LABELS, cfg), seq) == []
    # the same threshold with a sound that lasts: one event, start at its onset hop
    events = _feed(EventTracker(LABELS, cfg), [0.0, 0.9, 0.9, 0.9, 0.0])
    assert [e.kind for e in events] == ["start", "end"] and events[0].start == 1.0


def test_smoothing_bridges_dips_and_median_removes_spikes() -> None:
    dip = [0.9, 0.9, 0.1, 0.9, 0.9, 0.0, 0.0, 0.0]
    raw = _feed(EventTracker(LABELS, EventConfig(on=0.5, off=0.3, smoothing="none")), dip)
    ema = _feed(EventTracker(LABELS, EventConfig(on=0.5, off=0.3, smoothing="ema", alpha=0.5)), dip)
    assert len(raw) == 4 and len(ema) == 2
    spike = [0.0, 0.0, 1.0, 0.0, 0.0]
    assert _feed(EventTracker(LABELS, EventConfig(smoothing="median", median=3)), spike) == []


def test_open_event_closed_at_finish() -> None:
    tr = EventTracker(LABELS, EventConfig(smoothing="none"))
    assert [e.kind for e in _feed(tr, [0.0, 0.9, 0.9])] == ["start", "end"]


@pytest.mark.parametrize("bad", [dict(on=0.0), dict(on=0.5, off=0.6), dict(min_duration=-1),
                                 dict(smoothing="mean"), dict(alpha=0.0), dict(median=0)])
def test_bad_event_config(bad: dict) -> None:
    from dymn_edge.errors import DymnEdgeError

    with pytest.raises(DymnEdgeError):
        EventTracker(LABELS, EventConfig(**bad))
