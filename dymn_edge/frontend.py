"""Torch-free log-mel frontend: the EfficientAT preprocessing in NumPy.

The runtime must turn audio into exactly the spectrogram the checkpoints were trained on,
without torch. The recipe (see ``FrontendConfig``, EfficientAT's preprocessing):

1. pre-emphasis ``y[n] = x[n+1] - 0.97 x[n]`` (a valid convolution: one sample shorter);
2. STFT, n_fft 1024, hop 320, a symmetric (``periodic=False``) Hann window of 800 samples
   centred in the 1024-sample frame, ``center=True`` with reflect padding of n_fft // 2;
3. power spectrum ``re^2 + im^2``;
4. Kaldi mel filterbank (``torchaudio.compliance.kaldi.get_mel_banks``), 128 bands 0-15 kHz,
   triangles over the 512 non-Nyquist bins plus a zero Nyquist column;
5. ``log(mel + 1e-5)``, then ``(x + 4.5) / 5``.

Frames are gathered only over the window's non-zero support: the samples that the zero
part of the window would multiply never influence a frame, which lets the streaming
frontend emit a frame as soon as the samples it really depends on have arrived.
:class:`LogMelFrontend` (whole signals) and :class:`StreamingLogMel` (chunks) share one
code path, so their outputs agree to rounding.
"""

from __future__ import annotations

import logging

import numpy as np

from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

__all__ = ["LogMelFrontend", "StreamingLogMel", "kaldi_mel_banks", "symmetric_hann"]

#: Frames per FFT block (about 8 MB of float64 frames at n_fft 1024).
_BLOCK_FRAMES = 1024


def _mel_scale(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def kaldi_mel_banks(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Kaldi filterbank, as ``get_mel_banks`` + a zero Nyquist column.

    Kaldi spaces the triangles evenly on mel(f) = 1127 ln(1 + f / 700) and evaluates them at
    the n_fft // 2 non-Nyquist bins; EfficientAT pads a zero column so the bank multiplies
    the full one-sided spectrum. ``fmax <= 0`` counts down from Nyquist, as in Kaldi.
    """
    num_fft_bins = n_fft // 2
    nyquist = 0.5 * sample_rate
    high = fmax if fmax > 0 else fmax + nyquist
    if not 0.0 <= fmin < high <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= fmin < fmax <= {nyquist}: "
                         f"fmin={fmin}, fmax={high}")
    bin_width = sample_rate / n_fft
    mel_low, mel_high = float(_mel_scale(fmin)), float(_mel_scale(high))
    delta = (mel_high - mel_low) / (n_mels + 1)
    b = np.arange(n_mels, dtype=np.float64)[:, None]
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel_scale(bin_width * np.arange(num_fft_bins, dtype=np.float64))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, n_fft // 2 + 1 - num_fft_bins)))


def symmetric_hann(win_length: int, n_fft: int) -> np.ndarray:
    """Symmetric Hann window zero-padded to n_fft and centred, as ``torch.stft`` places it."""
    if not 0 < win_length <= n_fft:
        raise ValueError(f"win_length must be in 1..n_fft={n_fft}, got {win_length}")
    if win_length == 1:
        win = np.ones(1)
    else:
        n = np.arange(win_length, dtype=np.float64)
        win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (win_length - 1))
    left = (n_fft - win_length) // 2
    return np.pad(win, (left, n_fft - win_length - left))


def _reflect(idx: np.ndarray, length: int) -> np.ndarray:
    """Map signal indices outside [0, length) as NumPy/torch ``reflect`` padding does."""
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - idx, idx)


class _Core:
    """Window, filterbank and frame arithmetic shared by the batch and streaming frontends."""

    def __init__(self, cfg: FrontendConfig) -> None:
        if cfg.hop_length <= 0 or cfg.n_fft <= 0:
            raise ValueError("n_fft and hop_length must be positive")
        self.cfg = cfg
        window = symmetric_hann(cfg.win_length, cfg.n_fft)
        nz = np.flatnonzero(window)
        # Support of the window inside the frame: only these frame positions matter.
        self.first, self.last = int(nz[0]), int(nz[-1])
        self.span = self.last - self.first + 1
        self.win = window[self.first:self.last + 1]
        self.center = cfg.n_fft // 2
        self.mel = kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.fmin, cfg.fmax)
        self._offsets = np.arange(self.span)
        self.rowwise = False  # StreamingLogMel: frames independent of their batch (see _block)

    def n_frames(self, n_pre: int) -> int:
        """Frames of a whole pre-emphasised signal of ``n_pre`` samples (torch.stft center=True)."""
        return 1 + n_pre // self.cfg.hop_length if n_pre > 0 else 0

    def first_index(self, t: int) -> int:
        """Pre-emphasised sample index that frame t's window support starts at (may be < 0)."""
        return t * self.cfg.hop_length - self.center + self.first

    def needed(self, t: int) -> int:
        """Highest pre-emphasised index frame t depends on while the signal end is unknown.

        Negative indices are reflected about sample 0 (``center=True``), so the first frames
        depend on samples up to ``center - first`` even though they are centred earlier.
        """
        start = self.first_index(t)
        return max(start + self.span - 1, -start)

    def frames_to_logmel(
        self, y: np.ndarray, y_lo: int, t0: int, count: int, total: int | None
    ) -> np.ndarray:
        """Log-mel (..., n_mels, count) of frames t0..t0+count-1 from ``y`` (..., L_buf).

        ``y[..., k]`` holds pre-emphasised sample ``y_lo + k``. ``total`` is the full signal
        length when known (enables reflection at the end); ``None`` means only the start
        reflection may apply. Frames go through in blocks so that an hour-long file does
        not need gigabytes of float64 frames at once.
        """
        out = np.empty(y.shape[:-1] + (self.cfg.n_mels, count), dtype=np.float32)
        for b0 in range(0, count, _BLOCK_FRAMES):
            n = min(_BLOCK_FRAMES, count - b0)
            out[..., b0:b0 + n] = self._block(y, y_lo, t0 + b0, n, total)
        return out

    def _block(self, y: np.ndarray, y_lo: int, t0: int, count: int,
               total: int | None) -> np.ndarray:
        cfg = self.cfg
        starts = self.first_index(t0 + np.arange(count))
        idx = starts[:, None] + self._offsets[None, :]
        idx = _reflect(idx, total) if total is not None else np.abs(idx)
        seg = y[..., idx - y_lo] * self.win  # (..., count, span)
        frames = np.zeros(seg.shape[:-1] + (cfg.n_fft,), dtype=np.float64)
        frames[..., self.first:self.last + 1] = seg
        spec = np.fft.rfft(frames, axis=-1)
        power = spec.real ** 2 + spec.imag ** 2  # (..., count, n_fft//2+1)
        if self.rowwise:
            # each frame on its own, in one fixed summation order: a frame's values do not
            # depend on how many frames were computed with it (BLAS's do), and a stream's few
            # new frames skip BLAS's thread pool (10-100x its cost on a loaded machine)
            mel = np.einsum("...cf,mf->...cm", power, self.mel)
        else:
            mel = np.matmul(power, self.mel.T)  # (..., count, n_mels)
        out = (np.log(mel + cfg.log_offset) + cfg.norm_shift) / cfg.norm_scale
        return np.swapaxes(out, -1, -2)


def _preemphasis(x: np.ndarray, coef: float) -> np.ndarray:
    return x[..., 1:] - coef * x[..., :-1]


def frames_for_seconds(seconds: float, config: FrontendConfig = FrontendConfig()) -> int:
    """Frames of a ``seconds`` window: ``round(seconds * sample_rate / hop)`` (100 per second).

    The one definition of a window's frame count (the exported graph's time axis, the
    calibration and validation inputs, the metadata's ``window_frames``).
    """
    return int(round(seconds * config.sample_rate / config.hop_length))


def frames_of_samples(num_samples: int, config: FrontendConfig = FrontendConfig()) -> int:
    """Frames of a waveform of ``num_samples``: ``1 + (N - 1) // hop`` (N > 1).

    Pre-emphasis makes the signal one sample shorter; the centred STFT then gives one frame
    per hop plus one (``torch.stft(center=True)``, as EfficientAT computes it).
    """
    return 1 + (num_samples - 1) // config.hop_length if num_samples > 1 else 0


def samples_for_frames(frames: int, config: FrontendConfig = FrontendConfig(),
                       seconds: float | None = None) -> int:
    """Samples of a window whose log-mel has exactly ``frames`` frames.

    ``round(seconds * sample_rate)`` when that length gives exactly ``frames`` frames, else
    the nearest length that does. One rule for every fixed-shape input: a log-mel file's
    window in the tagger and a waveform file's input see the same audio.
    """
    lo = (frames - 1) * config.hop_length + 1  # frames_of_samples(n) == frames for n in [lo, lo + hop)
    n = max(lo, int(round(seconds * config.sample_rate))) if seconds else lo
    return min(n, lo + config.hop_length - 1)


class LogMelFrontend:
    """Whole-signal log-mel: ``(N,) -> (n_mels, T)`` or ``(B, N) -> (B, n_mels, T)`` float32.

    Input is a waveform at ``config.sample_rate``; T = 1 + (N - 1) // hop, as in
    EfficientAT (e.g. 1000 frames for 10 s at 32 kHz). The window and the filterbank are
    built once per instance.
    """

    def __init__(self, config: FrontendConfig = FrontendConfig()) -> None:
        self.config = config
        self._core = _Core(config)

    @property
    def mel_banks(self) -> np.ndarray:
        """The (n_mels, n_fft // 2 + 1) filterbank, float64."""
        return self._core.mel

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a waveform of ``num_samples`` samples."""
        return frames_of_samples(num_samples, self.config)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        x = np.asarray(wave, dtype=np.float64)
        if x.ndim not in (1, 2):
            raise ValueError(f"expected a waveform of shape (N,) or (B, N), got {x.shape}")
        if x.shape[-1] < 2:
            raise ValueError("a waveform needs at least 2 samples (pre-emphasis drops one)")
        y = _preemphasis(x, self.config.preemphasis)
        n = y.shape[-1]
        return self._core.frames_to_logmel(y, 0, 0, self._core.n_frames(n), n)


class StreamingLogMel:
    """Chunked log-mel whose concatenated output equals :class:`LogMelFrontend` on the whole.

    Equal up to float rounding (the batch frontend sums the filterbank with BLAS); the
    stream's own output is bit-identical however the input is chunked.

    ``push`` emits every frame already fully determined by the samples received: frame t's
    window covers pre-emphasised samples ``t*hop - 399 .. t*hop + 398`` (default recipe), and
    the first frames also need the samples their reflect padding mirrors from the start
    (frame 0 needs samples up to 399), so a frame is emitted about 400 samples (12.5 ms)
    after its centre. Frames that touch the signal end depend on the reflect padding at the
    end, i.e. on where the signal stops, so they come out only from ``flush``.
    Only the samples that pending frames still need are kept.
    """

    def __init__(self, config: FrontendConfig = FrontendConfig()) -> None:
        self.config = config
        self._core = _Core(config)
        self._core.rowwise = True  # the output does not depend on how the input was chunked
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next push starts a new signal."""
        self._last_x: float | None = None  # previous raw sample, for pre-emphasis
        self._y = np.zeros(0, dtype=np.float64)  # pre-emphasised samples held
        self._y_lo = 0  # index of self._y[0] in the pre-emphasised signal
        self._n_y = 0  # pre-emphasised samples received in total
        self._emitted = 0
        self._samples = 0
        self._flushed = False

    @property
    def frames_emitted(self) -> int:
        """Frames returned by push/flush since the last reset (index of the next frame)."""
        return self._emitted

    @property
    def samples_received(self) -> int:
        """Raw samples pushed since the last reset."""
        return self._samples

    @property
    def latency_samples(self) -> int:
        """Raw samples that must follow a frame's centre sample before push emits it.

        399 by default: the window's non-zero part reaches 398 pre-emphasised samples past
        the centre, and pre-emphasis looks one raw sample ahead. Frame 0 waits one sample
        more, for the start samples its reflect padding mirrors (up to index 399).
        """
        c = self._core
        return c.last - c.center + 1

    def _empty(self) -> np.ndarray:
        return np.zeros((self.config.n_mels, 0), dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append samples (1-D, at ``config.sample_rate``); return the newly final frames."""
        if self._flushed:
            raise RuntimeError("StreamingLogMel was flushed; call reset() before a new signal")
        x = np.asarray(samples, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return self._empty()
        self._samples += x.size
        if self._last_x is not None:
            x = np.concatenate(([self._last_x], x))
        self._last_x = float(x[-1])
        if x.size < 2:
            return self._empty()
        y_new = _preemphasis(x, self.config.preemphasis)
        self._y = np.concatenate((self._y, y_new)) if self._y.size else y_new
        self._n_y += y_new.size

        core, known = self._core, self._n_y
        t0 = self._emitted
        if core.needed(t0) > known - 1:
            return self._empty()
        # The end of frames t: t*hop - center + last; the start condition only binds early.
        t_end = (known - 1 + core.center - core.last) // self.config.hop_length
        t_end = min(t_end, (known - 1) // self.config.hop_length)
        while t_end >= t0 and core.needed(t_end) > known - 1:
            t_end -= 1
        count = t_end - t0 + 1
        if count <= 0:
            return self._empty()
        out = core.frames_to_logmel(self._y, self._y_lo, t0, count, None)
        self._emitted += count
        self._trim()
        return out

    def _trim(self) -> None:
        """Drop samples no pending frame can need (keep n_fft for the end reflection)."""
        core = self._core
        keep_from = max(0, min(core.first_index(self._emitted), self._n_y - self.config.n_fft))
        drop = keep_from - self._y_lo
        if drop > 0:
            self._y = self._y[drop:].copy()
            self._y_lo = keep_from

    def flush(self) -> np.ndarray:
        """End the signal: emit the frames that need its end (reflect padding).

        Afterwards ``frames_emitted`` holds the total; call :meth:`reset` before pushing a
        new signal (a second flush returns nothing).
        """
        total = self._n_y
        remaining = self._core.n_frames(total) - self._emitted
        out = self._empty()
        if remaining > 0:
            out = self._core.frames_to_logmel(self._y, self._y_lo, self._emitted,
                                              remaining, total)
            self._emitted += remaining
        self._flushed = True
        log.debug("flushed %d frames; %d frames from %d samples in total", out.shape[1],
                  self._emitted, self._samples)
        return out
