"""Ring buffers of audio and of log-mel frames, and the continuous log-mel of a stretch of audio.

Shared by the file tagger (:meth:`dymn_edge.runtime.tagger.Tagger.iter_file`) and the
streaming scorer (:mod:`dymn_edge.runtime.stream`), so a window of a log-mel file gets the
same input in both: a slice of :class:`LogMelTrack`, the continuous log-mel of the
noise-floored audio (frame t of the track is frame t of
:class:`~dymn_edge.frontend.LogMelFrontend` on the whole stretch). The noise floor is a
function of the absolute sample position alone (:func:`stream_noise`), so neither chunking
nor the mode changes it.
"""

from __future__ import annotations

import functools

import numpy as np

from dymn_edge.frontend import StreamingLogMel
from dymn_edge.registry import FrontendConfig

__all__ = ["AudioRing", "FrameRing", "LogMelTrack", "NOISE_BLOCK", "stream_noise"]


class AudioRing:
    """Fixed-capacity float32 ring buffer holding the most recent samples."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._pos = 0  # next write position
        self._filled = 0

    def clear(self) -> None:
        self._pos = 0
        self._filled = 0

    @property
    def filled(self) -> int:
        return self._filled

    def write(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        if x.size >= self.capacity:
            self._buf[:] = x[-self.capacity:]
            self._pos = 0
            self._filled = self.capacity
            return
        end = self._pos + x.size
        if end <= self.capacity:
            self._buf[self._pos:end] = x
        else:
            k = self.capacity - self._pos
            self._buf[self._pos:] = x[:k]
            self._buf[:end - self.capacity] = x[k:]
        self._pos = end % self.capacity
        self._filled = min(self.capacity, self._filled + x.size)

    def latest(self, n: int) -> np.ndarray:
        """A copy of the last ``n`` samples, oldest first."""
        n = min(int(n), self._filled)
        start = self._pos - n
        if start >= 0:
            return self._buf[start:self._pos].copy()
        return np.concatenate((self._buf[start:], self._buf[:self._pos]))


class FrameRing:
    """Fixed-capacity ring of log-mel frames (n_mels, capacity), indexed by frame number."""

    def __init__(self, n_mels: int, capacity: int) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((n_mels, self.capacity), dtype=np.float32)
        self.end = 0  # frames written since the stretch began (index of the next one)

    def clear(self) -> None:
        self.end = 0

    def write(self, frames: np.ndarray) -> None:
        n = frames.shape[1]
        if n >= self.capacity:
            frames, self.end = frames[:, -self.capacity:], self.end + n - self.capacity
            n = self.capacity
        pos = self.end % self.capacity
        k = min(n, self.capacity - pos)
        self._buf[:, pos:pos + k] = frames[:, :k]
        self._buf[:, :n - k] = frames[:, k:]
        self.end += n

    def get(self, first: int, count: int) -> np.ndarray:
        """A copy of frames ``first .. first + count - 1`` (all still in the ring)."""
        if first < self.end - self.capacity or first + count > self.end:
            raise IndexError(f"frames {first}..{first + count - 1} not in the ring "
                             f"({max(0, self.end - self.capacity)}..{self.end - 1})")
        idx = np.arange(first, first + count) % self.capacity
        return self._buf[:, idx]


#: Samples per block of the stream's noise floor: each block's noise is seeded by its index.
NOISE_BLOCK = 32000


@functools.lru_cache(maxsize=4)
def _noise_block(block: int, std: float) -> np.ndarray:
    return np.random.default_rng([0x5EED, block]).normal(0.0, std, NOISE_BLOCK).astype(np.float32)


def stream_noise(start: int, n: int, std: float) -> np.ndarray:
    """The noise floor of samples ``start .. start + n - 1`` of a stream (float32).

    A function of the absolute sample position alone (one seeded generator per block of
    :data:`NOISE_BLOCK` samples), so chunking changes nothing and a file gets the same floor.
    """
    out = np.empty(n, dtype=np.float32)
    pos = 0
    while pos < n:
        block, off = divmod(start + pos, NOISE_BLOCK)
        k = min(n - pos, NOISE_BLOCK - off)
        out[pos:pos + k] = _noise_block(block, float(std))[off:off + k]
        pos += k
    return out


class LogMelTrack:
    """The continuous log-mel of one stretch of audio (noise floor added), in a frame ring.

    ``push`` takes raw samples, adds :func:`stream_noise` at their absolute positions and
    keeps the frames :class:`~dymn_edge.frontend.StreamingLogMel` makes final (a frame is
    final ~12.5 ms of audio after its centre; ``flush`` ends the stretch with the end
    reflection, as the end of a file). :meth:`window` slices the frames of the window that
    starts at an absolute sample, when they are all known: the frames a window gets are
    then the frames of the whole stretch, never recomputed per window.
    """

    def __init__(self, config: FrontendConfig, capacity_frames: int, dither: float) -> None:
        self.config = config
        self.dither = float(dither)
        self._fe = StreamingLogMel(config)
        self._frames = FrameRing(config.n_mels, capacity_frames)
        self.reset(0)

    def reset(self, origin: int) -> None:
        """Start a new stretch whose first sample is absolute sample ``origin``."""
        self.origin = int(origin)
        self.received = 0
        self._fe.reset()
        self._frames.clear()

    @property
    def frames_computed(self) -> int:
        """Frames computed since the stretch began (each frame once, however it is sliced)."""
        return self._fe.frames_emitted

    def on_grid(self, start: int) -> bool:
        """Whether a window starting at absolute sample ``start`` is a slice of the track."""
        return start >= self.origin and (start - self.origin) % self.config.hop_length == 0

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.dither > 0:
            x = x + stream_noise(self.origin + self.received, x.size, self.dither)
        self.received += x.size
        self._frames.write(self._fe.push(x))

    def flush(self) -> None:
        """The stretch ends here: its last frames (end reflection) become known."""
        self._frames.write(self._fe.flush())

    def window(self, start: int, frames: int) -> np.ndarray | None:
        """Frames (n_mels, ``frames``) of the window starting at absolute sample ``start``
        (on the grid), or None while its last frames are not known yet."""
        first = (start - self.origin) // self.config.hop_length
        if first + frames > self._frames.end:
            return None
        return self._frames.get(first, frames)
