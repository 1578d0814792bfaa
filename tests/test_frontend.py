"""NumPy log-mel frontend against the official spectrograms, and streaming chunk invariance.

No torch here: the golden arrays were computed by the official code, so matching them shows
the frontend is faithful without needing torch at test time.
"""

from __future__ import annotations

import numpy as np
import pytest

from dymn_edge.frontend import LogMelFrontend, StreamingLogMel, kaldi_mel_banks, symmetric_hann
from dymn_edge.registry import FrontendConfig

GOLDEN_TOL = 2e-4
STREAM_TOL = 1e-6


@pytest.fixture(scope="module")
def frontend() -> LogMelFrontend:
    return LogMelFrontend()


@pytest.fixture(scope="module")
def full_mel(frontend: LogMelFrontend, golden_io) -> np.ndarray:
    return frontend(golden_io["wave_32k"])


def test_matches_golden_10s(full_mel: np.ndarray, golden_io) -> None:
    ref = golden_io["mel_10s"][0]
    assert full_mel.shape == ref.shape == (128, 1000)
    assert full_mel.dtype == np.float32
    assert np.abs(full_mel - ref).max() < GOLDEN_TOL


def test_matches_golden_1s(frontend: LogMelFrontend, golden_io) -> None:
    out = frontend(golden_io["wave_32k"][:32000])
    ref = golden_io["mel_1s"][0]
    assert out.shape == ref.shape == (128, 100)
    assert np.abs(out - ref).max() < GOLDEN_TOL


def test_matches_golden_batch(frontend: LogMelFrontend, golden_io) -> None:
    out = frontend(golden_io["noise_32k"])
    ref = golden_io["mel_batch2"]
    assert out.shape == ref.shape == (2, 128, 200)
    assert np.abs(out - ref).max() < GOLDEN_TOL
    # A batch is the rows computed one by one.
    np.testing.assert_allclose(out[1], frontend(golden_io["noise_32k"][1]), atol=1e-6)


def test_frame_count_and_shapes(frontend: LogMelFrontend) -> None:
    for n in (2, 320, 321, 641, 32000, 32001):
        t = frontend.num_frames(n)
        assert t == 1 + (n - 1) // 320
        assert frontend(np.zeros(n, np.float32)).shape == (128, t)
    with pytest.raises(ValueError):
        frontend(np.zeros(1, np.float32))
    with pytest.raises(ValueError):
        frontend(np.zeros((1, 2, 3), np.float32))


def test_filterbank_and_window() -> None:
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert banks.shape == (128, 513)
    assert np.all(banks[:, 512] == 0)  # Nyquist column
    assert np.all(banks >= 0) and np.all(banks.max(axis=1) > 0)
    # Triangles are spaced on mel(f) = 1127 ln(1 + f/700): no energy above fmax.
    assert np.all(banks[:, int(np.ceil(15000 / 31.25)) + 1:] == 0)
    win = symmetric_hann(800, 1024)
    assert win.shape == (1024,) and np.all(win[:112] == 0) and np.all(win[912:] == 0)
    np.testing.assert_allclose(win[112:912], np.hanning(800), atol=1e-12)


def _stream(x: np.ndarray, sizes) -> tuple[np.ndarray, StreamingLogMel]:
    s = StreamingLogMel(FrontendConfig())
    outs, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        out = s.push(x[i:i + n])
        assert out.shape[0] == 128 and out.dtype == np.float32
        outs.append(out)
        i += n
    assert i >= len(x)
    outs.append(s.flush())
    return np.concatenate(outs, axis=1), s


@pytest.mark.parametrize("chunk", [320, 1000, 32000])
def test_streaming_equals_whole(chunk: int, full_mel: np.ndarray, golden_io) -> None:
    x = golden_io["wave_32k"]
    out, s = _stream(x, [chunk] * (len(x) // chunk + 1))
    assert out.shape == full_mel.shape
    assert np.abs(out - full_mel).max() < STREAM_TOL
    assert s.frames_emitted == full_mel.shape[1]


def test_streaming_random_chunks(full_mel: np.ndarray, golden_io) -> None:
    x = golden_io["wave_32k"]
    rng = np.random.default_rng(0)
    out, _ = _stream(x, rng.integers(0, 4000, size=len(x)))
    assert np.abs(out - full_mel).max() < STREAM_TOL


def test_streaming_single_samples_and_short_signals() -> None:
    fe = LogMelFrontend()
    rng = np.random.default_rng(1)
    for n in (2, 3, 300, 401, 513, 2000):
        x = rng.standard_normal(n).astype(np.float32)
        whole = fe(x)
        for chunk in (1, 7, n):
            out, s = _stream(x, [chunk] * n)
            assert out.shape == whole.shape, (n, chunk)
            assert np.abs(out - whole).max() < STREAM_TOL, (n, chunk)
            assert s.frames_emitted == whole.shape[1]


def test_streaming_emits_frames_as_soon_as_determined() -> None:
    s = StreamingLogMel()
    assert s.push(np.zeros(400, np.float32)).shape == (128, 0)  # frame 0 mirrors sample 400
    assert s.push(np.zeros(1, np.float32)).shape == (128, 1)
    assert s.frames_emitted == 1
    # Frame t needs raw samples up to t*320 + latency: frame 1 -> 320 + 399.
    assert s.latency_samples == 399
    assert s.push(np.zeros(320 + 399 - 401, np.float32)).shape == (128, 0)
    assert s.push(np.zeros(1, np.float32)).shape == (128, 1)
    assert s.samples_received == 720
    # 720 samples: 2 frames in total; the rest need the end.
    assert s.flush().shape == (128, 1)
    assert s.frames_emitted == 3
    with pytest.raises(RuntimeError):
        s.push(np.zeros(10, np.float32))
    s.reset()
    assert s.frames_emitted == 0 and s.samples_received == 0
    assert s.flush().shape == (128, 0)


def test_streaming_prefix_frames_do_not_depend_on_the_future() -> None:
    """Frames emitted by push are final: any continuation gives the same whole-signal frames."""
    rng = np.random.default_rng(2)
    head = rng.standard_normal(5000).astype(np.float32)
    s = StreamingLogMel()
    early = s.push(head)
    fe = LogMelFrontend()
    for _ in range(2):
        tail = rng.standard_normal(int(rng.integers(2, 3000))).astype(np.float32)
        whole = fe(np.concatenate([head, tail]))
        np.testing.assert_allclose(whole[:, :early.shape[1]], early, atol=STREAM_TOL, rtol=0)



def test_block_processing_is_invisible(monkeypatch, full_mel: np.ndarray, golden_io) -> None:
    import dymn_edge.frontend as fe_mod

    monkeypatch.setattr(fe_mod, "_BLOCK_FRAMES", 7)
    np.testing.assert_array_equal(LogMelFrontend()(golden_io["wave_32k"]), full_mel)


def test_streaming_output_does_not_depend_on_chunking() -> None:
    """Bit-identical frames however the samples arrive (the stream's windows rely on it)."""
    x = 0.1 * np.random.default_rng(5).standard_normal(40000)
    one, _ = _stream(x, [40000])
    for sizes in ([1, 319, 5000, 7, 40000], [320] * 125, [3199] * 13):
        got, _ = _stream(x, sizes)
        assert np.array_equal(got, one)
