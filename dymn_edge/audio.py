"""Audio reading for the torch-free runtime: any soundfile format, any rate, any channels.

The models expect 32 kHz mono float32; files come at 8, 16, 44.1, 48 kHz..., stereo or
multichannel, 16/24-bit or float. ``read_audio`` decodes with soundfile, downmixes by the
channel mean and resamples with soxr (a band-limited, anti-aliasing resampler: naive
interpolation would fold content above the new Nyquist into the band the model hears).
Every failure a user can cause is an :class:`~dymn_edge.errors.AudioError` with a one-line
message naming the file. The microphone path reuses :func:`to_mono` and :func:`resample`;
sounddevice is deliberately not imported here, so file tagging works without PortAudio.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dymn_edge.errors import AudioError, one_line

log = logging.getLogger(__name__)

__all__ = ["read_audio", "resample", "to_mono", "fit_to_length", "DEFAULT_QUALITY"]

#: soxr quality for offline resampling: 'HQ' is 20-bit precision, far below float32 model noise.
DEFAULT_QUALITY = "HQ"


def to_mono(x: np.ndarray) -> np.ndarray:
    """Downmix ``(N,)`` or channels-last ``(N, C)`` audio to ``(N,)`` float32 by the mean.

    Channels-last is the layout of soundfile and sounddevice; the mean keeps the level of a
    signal that is identical in all channels.
    """
    a = np.asarray(x)
    if a.ndim == 1:
        return a.astype(np.float32, copy=False)
    if a.ndim != 2:
        raise ValueError(f"expected audio of shape (N,) or (N, channels), got {a.shape}")
    if a.shape[1] == 1:
        return a[:, 0].astype(np.float32, copy=False)
    return a.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(
    x: np.ndarray, orig_sr: int, target_sr: int, quality: str = DEFAULT_QUALITY
) -> np.ndarray:
    """Resample a whole mono (N,) or channels-last (N, C) signal with soxr; float32 out.

    soxr compensates its filter delay, so the output is time-aligned with the input and has
    about ``N * target_sr / orig_sr`` samples. Equal rates return the input unchanged.
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    a = np.asarray(x, dtype=np.float32)
    if orig_sr == target_sr or a.shape[0] == 0:
        return a
    out = soxr.resample(a, orig_sr, target_sr, quality=quality)
    return np.asarray(out, dtype=np.float32)


def fit_to_length(x: np.ndarray, n: int) -> np.ndarray:
    """Centre ``x`` (N,) in ``n`` zeros, or centre-crop it to ``n`` samples.

    Short clips get ``(n - N) // 2`` zeros before and the rest after; long clips keep
    samples ``(N - n) // 2 ...`` — the 1 s window convention of the FSDD evaluation.
    """
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {a.shape}")
    size = a.shape[0]
    if size == n:
        return a.copy()
    if size > n:
        start = (size - n) // 2
        return a[start:start + n].copy()
    left = (n - size) // 2
    return np.pad(a, (left, n - size - left))


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or the one-line AudioError a user gets for a missing file or a folder."""
    if not os.fspath(path).strip():  # Path("") is ".", the current folder
        raise AudioError("an audio file name is empty")
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioError(f"expected an audio file, got a directory: {p}")
    return p


def audio_info(path: str | os.PathLike):
    """``soundfile.info`` of ``path`` with the same one-line errors as :func:`read_audio`.

    For readers that stream a file in blocks instead of decoding it whole.
    """
    p = _existing_file(path)
    try:
        return sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioError(f"cannot decode audio file {p}: {one_line(exc)}") from exc


def read_audio(path: str | os.PathLike, sample_rate: int = 32000,
               quality: str = DEFAULT_QUALITY) -> np.ndarray:
    """Decode ``path`` to float32 mono at ``sample_rate`` Hz (soxr-resampled when needed).

    Raises AudioError (one line, naming the file) for a missing or unreadable file, a file
    without samples, or one with NaN / infinite samples (float WAVs can hold them, and they
    would silently turn every score into NaN).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = _existing_file(path)
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        raise AudioError(f"cannot decode audio file {p}: {one_line(exc)}") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"audio file {p} holds no samples")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(f"audio file {p} contains {bad} non-finite samples (NaN or inf)")
    mono = to_mono(data)
    if sr != sample_rate:
        log.debug("resampling %s from %d Hz to %d Hz", p, sr, sample_rate)
        mono = resample(mono, sr, sample_rate, quality=quality)
        if mono.size == 0:
            raise AudioError(f"audio file {p} is too short to resample to {sample_rate} Hz")
    return np.ascontiguousarray(mono, dtype=np.float32)
