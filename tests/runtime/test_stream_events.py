"""Streaming scorer (chunk-size invariance, equality with file windows) and the event tracker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dymn_edge.audio import read_audio
from dymn_edge.labels import Label
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.events import EventConfig, EventTracker
from dymn_edge.frontend import LogMelFrontend
from dymn_edge.runtime.rings import AudioRing, FrameRing, stream_noise
from dymn_edge.runtime.stream import StreamingScorer, score_wave
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
    for s in scorer.flush().scores:
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


def test_window_frames_are_the_continuous_log_mel(tagger: Tagger, metro_wav: Path) -> None:
    """The invariant: a full window's frames are the whole signal's log-mel frames, sliced.

    The whole signal here is the file with the stream's noise floor, through the batch
    frontend at once; the stream computes it 0.125 s at a time and slices its ring.
    """
    wave = read_audio(metro_wav)[: 4 * 32000 + 1000]
    scorer = StreamingScorer(tagger, 1.0, 0.5)
    stream = _run(scorer, wave, 4000)
    whole = LogMelFrontend(tagger.frontend_config)(wave + stream_noise(0, len(wave), tagger.dither))
    full = [r for r in stream if round(r[1] - r[0], 6) == 1.0]
    assert len(full) == 7 and [round(r[1], 6) for r in full] == [1, 1.5, 2, 2.5, 3, 3.5, 4]
    for r in full:
        first = int(round(r[0] * 100))  # 100 frames per second
        ref = tagger.score_frames(whole[:, first:first + scorer.window_frames], r[0], r[1])
        np.testing.assert_allclose(r[2:], ref.probabilities, atol=1e-5, rtol=0)
    # file mode is the same slicing: identical rows, also for the window at the end
    files = score_wave(tagger, wave, 1.0, 0.5)
    np.testing.assert_array_equal(np.array([[f.start, f.end, *f.probabilities] for f in files]), stream)
    # the warm-up window (0.5 s of audio) is the file tagger's padded window, as before
    warm = tagger.score(wave[:16000], 0.0, 0.5)
    assert warm.padded and np.array_equal(stream[0][2:], warm.probabilities)


def test_file_windows_are_slices_of_the_continuous_log_mel(tagger: Tagger, metro_wav: Path,
                                                           tmp_path: Path) -> None:
    """dymn-tag's windowed file mode slices the recording's log-mel as the stream does.

    Windows on the frame grid equal the batch frontend on the whole noise-floored signal,
    sliced, and the stream's scores of the same windows to the bit; the end-aligned last
    window (off the grid here) is the window's own audio; reading the same samples from a
    file in blocks changes nothing.
    """
    import soundfile as sf

    wave = read_audio(metro_wav)[: 3 * 32000 + 4321]
    got = tagger.tag_windows(wave, 1.0, 0.5)
    assert [(r.start, r.end) for r in got][:5] == [(0, 1), (.5, 1.5), (1, 2), (1.5, 2.5), (2, 3)]
    whole = LogMelFrontend(tagger.frontend_config)(wave + stream_noise(0, len(wave), tagger.dither))
    for r in got[:5]:
        first = int(round(r.start * 100))
        ref = tagger.score_frames(whole[:, first:first + 100], r.start, r.end)
        np.testing.assert_allclose(r.probabilities, ref.probabilities, atol=1e-5, rtol=0)
    stream = {(s.start, s.end): s.probabilities for s in score_wave(tagger, wave, 1.0, 0.5)}
    for r in got[:5]:
        np.testing.assert_array_equal(r.probabilities, stream[(r.start, r.end)])
    last = got[-1]
    assert last.end == len(wave) / 32000 and (len(wave) - 32000) % 320  # off the grid
    own = tagger.score(wave[-32000:], last.start, last.end)
    np.testing.assert_array_equal(last.probabilities, own.probabilities)
    # a hop off the 10 ms grid (0.5005 s): those windows are the window's own audio, not a slice
    off = tagger.tag_windows(wave, 1.0, 0.5005)
    assert off[1].start == 0.5005
    np.testing.assert_array_equal(off[1].probabilities,
                                  tagger.score(wave[16016:48016], 0.5005, 1.5005).probabilities)
    path = tmp_path / "metro_32k.wav"
    sf.write(path, wave, 32000, subtype="FLOAT")
    from_file = list(tagger.iter_file(path, 1.0, 0.5))
    np.testing.assert_array_equal(np.stack([r.probabilities for r in from_file]),
                                  np.stack([r.probabilities for r in got]))


def test_per_hop_log_mel_is_only_the_new_audio(tagger: Tagger) -> None:
    """10 s window, 1 s hop: each hop adds one hop of frames to the ring, never a whole window."""
    if tagger.fixed:
        pytest.skip("fixed-shape file: its window is the 1 s it was exported for")
    scorer = StreamingScorer(tagger, 10.0, 1.0)
    rng = np.random.default_rng(3)
    scorer.push((0.05 * rng.standard_normal(12 * 32000)).astype(np.float32))
    emitted = scorer._track.frames_computed  # the stream's own log-mel track
    assert scorer.hops_run == 12 - 1  # the window ending at 12 s waits for 12.5 ms more audio
    scorer.push(np.zeros(32000, np.float32))
    assert scorer._track.frames_computed - emitted == 100 and scorer.hops_run == 12


def test_warmup_reset_gap_and_skip(tagger: Tagger) -> None:
    sr = 32000
    s = StreamingScorer(tagger, 1.0, 0.25)
    assert s.push(np.zeros(sr // 8, np.float32)).scores == []  # less than a hop: nothing yet
    first = s.push(np.zeros(sr // 8, np.float32)).scores
    assert len(first) == 1 and first[0].padded and first[0].end == 0.25
    # 4 boundaries, only the newest scored (its last frames need 12.5 ms more audio: given here)
    upd = s.push(np.zeros(sr + 480, np.float32), max_windows=1)
    assert len(upd.scores) == 1 and upd.skipped == 3 and upd.scores[0].end == 1.25
    s.gap(sr // 2 - 480)  # two lost hops
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


def test_frame_ring_keeps_frame_numbers() -> None:
    ring = FrameRing(2, 5)
    ring.write(np.arange(8).reshape(2, 4))
    ring.write(np.arange(8, 14).reshape(2, 3))  # frames 4..6 (wraps)
    np.testing.assert_array_equal(ring.get(2, 5)[0], [2, 3, 8, 9, 10])
    with pytest.raises(IndexError):
        ring.get(1, 2)  # overwritten
    with pytest.raises(IndexError):
        ring.get(6, 2)  # not written yet


def test_stream_noise_does_not_depend_on_chunks() -> None:
    whole = stream_noise(1000, 70000, 1e-4)
    parts = np.concatenate([stream_noise(1000 + a, b - a, 1e-4)
                            for a, b in ((0, 1), (1, 31000), (31000, 64000), (64000, 70000))])
    assert np.array_equal(whole, parts) and 0.5e-4 < whole.std() < 2e-4


def test_spoken_digits_become_events_in_order(fsdd_onnx: Path, fsdd_dir: Path) -> None:
    tagger = Tagger(load_engine(fsdd_onnx, threads=1))
    digits = [3, 9, 1, 7]
    wave, centres = spoken_digits(fsdd_dir, digits)
    scorer = StreamingScorer(tagger, 1.0, 0.25)
    # on=0.75: the smoothed peak of the "1" (misheard as "4" for half a second) is 0.80 with
    # per-window log-mels and 0.799 with the stream's continuous ones: 0.8 sat on the edge
    tracker = EventTracker(tagger.labels, EventConfig(on=0.75, off=0.5), hop_s=0.25)
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


def test_raw_peak_is_kept_beside_the_smoothed_one() -> None:
    """A single 0.99 window after silence reads 0.693 after an ema of 0.7: both are reported."""
    tr = EventTracker(LABELS, EventConfig(on=0.5, off=0.3, smoothing="ema", alpha=0.7))
    events = _feed(tr, [0.0, 0.99, 0.0, 0.0])
    assert [e.kind for e in events] == ["start", "end"]
    assert events[1].peak_raw == pytest.approx(0.99) and events[1].probability == pytest.approx(0.693)


# -- the level gate, with the softmax FSDD model on real audio ----------------------------------


def _listen_events(tagger: Tagger, wave: np.ndarray, min_level: float | None) -> list:
    """Events of a real Listener fed ``wave`` (as the microphone would, 50 ms at a time)."""
    from dymn_edge.runtime.microphone import Listener

    lis = Listener(StreamingScorer(tagger, 1.0, 0.25),
                   EventTracker(tagger.labels, EventConfig(on=0.5, off=0.3, min_level_dbfs=min_level), 0.25))
    seen: list = []
    lis._dispatch = seen.extend  # the events the sinks would get, in order
    for k in range(0, wave.size, 1600):
        lis._consume(wave[k:k + 1600], None)  # the capture thread's consumer
    return seen + lis.tracker.finish()


def test_level_gate_silences_silence_and_low_noise_not_speech(fsdd_onnx: Path, fsdd_dir: Path) -> None:
    """A softmax head names a class for anything: white noise at -70 dBFS is "five" at 0.98.
    The default floor for softmax heads keeps silence and that noise out, and the quietest
    FSDD recording (6_theo_33, a 1 s window at -57.8 dBFS) still becomes its event."""
    from dymn_edge.runtime.events import SOFTMAX_MIN_LEVEL_DBFS, level_dbfs

    tagger = Tagger(load_engine(fsdd_onnx, threads=1))
    assert tagger.metadata.output_activation == "softmax"
    sr = 32000
    silence = np.zeros(3 * sr, np.float32)
    noise = (10 ** (-70 / 20) * np.random.default_rng(1).standard_normal(3 * sr)).astype(np.float32)
    assert level_dbfs(silence) == -np.inf and level_dbfs(noise) == pytest.approx(-70, abs=0.1)
    ungated = _listen_events(tagger, noise, None)
    assert [e.label.display_name for e in ungated if e.kind == "start"] == ["five"]  # the problem
    assert _listen_events(tagger, silence, SOFTMAX_MIN_LEVEL_DBFS) == []
    assert _listen_events(tagger, noise, SOFTMAX_MIN_LEVEL_DBFS) == []
    quiet = read_audio(fsdd_dir / "recordings" / "6_theo_33.wav", sr)
    wave = np.concatenate([silence[:sr], quiet, silence[:sr]])
    events = _listen_events(tagger, wave, SOFTMAX_MIN_LEVEL_DBFS)
    assert [(e.kind, e.label.display_name) for e in events] == [("start", "six"), ("end", "six")]
    assert events[1].peak_raw > 0.9 and 1.0 <= events[0].start <= 1.5


def test_listen_level_gate_default_follows_the_head(fsdd_onnx: Path) -> None:
    """On for softmax heads, off on request (and for sigmoid heads)."""
    import argparse

    from dymn_edge.runtime.cli import _min_level
    from dymn_edge.runtime.events import SOFTMAX_MIN_LEVEL_DBFS

    tagger = Tagger(load_engine(fsdd_onnx, threads=1))
    assert _min_level(argparse.Namespace(min_level_dbfs=None), tagger) == SOFTMAX_MIN_LEVEL_DBFS
    assert _min_level(argparse.Namespace(min_level_dbfs="off"), tagger) is None
    assert _min_level(argparse.Namespace(min_level_dbfs=-45.0), tagger) == -45.0
    sigmoid = argparse.Namespace(metadata=argparse.Namespace(output_activation="sigmoid"))
    assert _min_level(argparse.Namespace(min_level_dbfs=None), sigmoid) is None


def test_info_says_a_softmax_head_has_no_nothing_class(fsdd_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    from dymn_edge.runtime.info import main as info_main

    assert info_main([str(fsdd_onnx)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "no 'nothing' class" in x]
    assert len(lines) == 1 and "softmax head" in lines[0] and "--min-level-dbfs" in lines[0]
