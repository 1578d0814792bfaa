"""Audio reading: real 44.1 kHz / 24-bit and 8 kHz files, downmix, resampling, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.audio import fit_to_length, read_audio, resample, to_mono
from dymn_edge.errors import AudioError, DymnEdgeError


def test_metro_matches_golden_resample(metro_wav: Path, golden_io) -> None:
    x = read_audio(metro_wav)
    ref = golden_io["wave_32k"]  # scipy.signal.resample_poly(x, 320, 441)
    assert x.dtype == np.float32 and x.ndim == 1
    assert x.shape == ref.shape == (320000,)
    assert np.corrcoef(x, ref)[0, 1] > 0.999
    err = np.abs(x - ref)[1000:-1000]  # edges: the two filters treat the ends differently
    assert np.sqrt(np.mean(err ** 2)) < 5e-4
    assert err.max() < 1e-2


def test_stereo_downmix_and_resample(tmp_path: Path) -> None:
    sr = 48000
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="FLOAT")

    same_rate = read_audio(path, sample_rate=sr)
    np.testing.assert_allclose(same_rate, 0.3 * np.sin(2 * np.pi * 440 * t), atol=1e-6)

    x = read_audio(path)  # 48 kHz -> 32 kHz
    assert x.shape == (32000,)
    t32 = np.arange(32000) / 32000
    np.testing.assert_allclose(x[500:-500], 0.3 * np.sin(2 * np.pi * 440 * t32)[500:-500],
                               atol=1e-3)


def test_resampler_is_anti_aliased() -> None:
    """A 14 kHz tone at 32 kHz must vanish at 16 kHz, not fold to 2 kHz."""
    t = np.arange(32000) / 32000
    x = np.sin(2 * np.pi * 14000 * t).astype(np.float32)
    y = resample(x, 32000, 16000)
    assert y.shape == (16000,)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 1e-3


def test_fsdd_8k_file(fsdd_dir: Path) -> None:
    path = fsdd_dir / "recordings" / "0_george_0.wav"
    info = sf.info(path)
    assert info.samplerate == 8000
    x = read_audio(path)
    assert x.dtype == np.float32
    assert abs(len(x) - 4 * info.frames) <= 1
    assert np.isfinite(x).all() and np.abs(x).max() > 0.01


def test_helpers() -> None:
    stereo = np.array([[1.0, 3.0], [2.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_mono(stereo), [2.0, 3.0])
    np.testing.assert_array_equal(to_mono(np.array([[1.0], [2.0]])), [1.0, 2.0])
    assert to_mono(np.ones(3)).dtype == np.float32
    assert resample(np.ones(10), 16000, 16000).shape == (10,)

    np.testing.assert_array_equal(fit_to_length(np.array([1, 2, 3]), 7), [0, 0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_to_length(np.array([1, 2, 3]), 6), [0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(fit_to_length(np.arange(7), 3), [2, 3, 4])
    np.testing.assert_array_equal(fit_to_length(np.arange(6), 3), [1, 2, 3])
    np.testing.assert_array_equal(fit_to_length(np.arange(3), 3), [0, 1, 2])
    assert fit_to_length(np.arange(5.0), 32000).shape == (32000,)


def _assert_audio_error(path: Path, fragment: str) -> None:
    with pytest.raises(AudioError) as info:
        read_audio(path)
    msg = str(info.value)
    assert isinstance(info.value, DymnEdgeError)
    assert "\n" not in msg
    assert path.name in msg
    assert fragment in msg


def test_missing_file(tmp_path: Path) -> None:
    _assert_audio_error(tmp_path / "nope.wav", "not found")


def test_undecodable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all\n" * 40)
    _assert_audio_error(path, "cannot decode")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    _assert_audio_error(path, "no samples")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    data = np.zeros(1600, np.float32)
    data[100] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    _assert_audio_error(path, "non-finite")
    all_nan = tmp_path / "allnan.wav"
    sf.write(all_nan, np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    _assert_audio_error(all_nan, "non-finite")


def test_directory(tmp_path: Path) -> None:
    _assert_audio_error(tmp_path, "directory")

