"""File tagging: whole-clip and windowed predictions from an exported model.

How audio becomes model input (the same rules serve the streaming scorer, so file and
stream scores of the same window agree exactly):

- Invariant of windowed mode (log-mel files): a window's frames are a slice of the
  recording's continuous log-mel (:class:`~dymn_edge.runtime.rings.LogMelTrack`, the
  frontend recorded in the model metadata over the whole noise-floored recording, computed
  once, never per window), exactly as the streaming scorer slices its ring. Windows off the
  10 ms frame grid (an end-aligned last window, a hop that is no multiple of 10 ms), audio
  shorter than one window, whole-clip scores and waveform files use the window's own
  audio: the frontend on that window alone (:meth:`Tagger.score`).
- Audio shorter than the model's window (a short clip, the stream's first hops) is
  **centred in zeros** to the model window before the frontend: this is how the FSDD
  evaluation feeds 1 s windows and how fixed-shape files (TFLite, exported for one window)
  must be fed. Dynamic-time models get the same padding, so a 0.4 s digit is scored as the
  model was trained and validated, not as a 40-frame sliver.
- Windowed mode (``window`` / ``hop`` in seconds): windows start at 0, hop, 2 hop, ...
  as long as they fit; if audio remains after the last full window, one more window is
  aligned to the end of the clip (real audio only, no padding), so no audio is ever
  dropped and no window mixes audio with invented silence.
- A noise floor (``dither``, Gaussian, std 1e-4 = -80 dBFS) is added before the frontend:
  to the recording by absolute sample position (``rings.stream_noise``) for sliced windows,
  to the window seeded by its position otherwise, so results are reproducible. Digital
  silence (zero padding, muted inputs) gives log-mel values at the ``log(1e-5)`` floor that
  no training clip had: measured on 60 FSDD test digits, zero-padded clips score 62 %
  top-1 and clips with the floor 95 % (the reference evaluation adds the same 1e-4 noise).
  Real recordings are far above it; ``dither=0`` turns it off.
- Files (:meth:`Tagger.iter_file`) are read in blocks and resampled with a streaming
  resampler, so memory does not grow with the file's length; a file longer than the model
  window is scored in windows of the model's length by default (a whole-clip score would
  mean different things for a fixed-shape and a dynamic-time file of the same model).
- Waveform files (``dymn-export --waveform``) take the same prepared window as samples: the
  log-mel frontend and the activation run inside the graph, so no NumPy frontend is used
  and the model returns probabilities (the ranking key of saturated ties is derived from
  them: log p for softmax heads, the logit for sigmoid heads).
- Whole-clip mode (short files, or asked for): a dynamic-time model sees the whole clip at once (EfficientAT's
  inference). A fixed-shape model sees windows of its own length at half-window hop, and
  the clip probability is their mean (softmax heads: one class per clip) or their maximum
  (sigmoid heads: a tag present anywhere in the clip).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dymn_edge.audio import DEFAULT_QUALITY, audio_info, fit_to_length, to_mono
from dymn_edge.errors import AudioError, DymnEdgeError
from dymn_edge.frontend import LogMelFrontend, samples_for_frames
from dymn_edge.labels import Label
from dymn_edge.metrics import to_probabilities
from dymn_edge.runtime.engines import Engine
from dymn_edge.runtime.rings import LogMelTrack

log = logging.getLogger(__name__)

__all__ = ["WindowScores", "Tagger", "labels_of", "activation", "ranking_key", "DEFAULT_DITHER",
           "iter_audio_blocks"]

#: Std of the noise floor added before the frontend (see the module docstring).
DEFAULT_DITHER = 1e-4
#: Largest --dither: -20 dBFS of noise already buries quiet sounds; above it is a typo.
MAX_DITHER = 0.1
#: Longest analysis window (s): 10 minutes of audio is 77 MB of samples and 60000 frames per
#: inference; --window 1e9 would try to allocate tens of TiB.
MAX_WINDOW_S = 600.0


def _warn_if_not_validated(engine: Engine) -> None:
    """A file whose validation failed or was skipped is used, but never without a word."""
    val = engine.metadata.validation or {}
    if val.get("passed") is False:
        log.warning("%s: this file FAILED validation at export (%s); its scores may be wrong",
                    engine.path.name, "; ".join(map(str, val.get("errors") or [])) or "see dymn-info")
    elif val.get("skipped"):
        log.warning("%s: this file was exported without validation (--no-validate)", engine.path.name)


def labels_of(engine: Engine) -> list[Label]:
    """The model's labels from its metadata, in output order."""
    meta = engine.metadata
    labs = sorted(meta.labels, key=lambda d: int(d["index"]))
    out = [Label(int(d["index"]), d.get("mid"), str(d.get("display_name") or f"class_{d['index']}"))
           for d in labs]
    if len(out) != meta.num_classes:
        raise DymnEdgeError(f"{engine.path}: metadata lists {len(out)} labels for "
                            f"{meta.num_classes} classes")
    return out


def activation(logits: np.ndarray, kind: str) -> np.ndarray:
    """Probabilities from logits: ``sigmoid`` (multi-label) or ``softmax`` (one of N)."""
    try:
        return to_probabilities(logits, kind).astype(np.float32)
    except ValueError as exc:
        raise DymnEdgeError(f"unknown output activation '{kind}' in the model metadata") from exc


def ranking_key(probabilities: np.ndarray, kind: str) -> np.ndarray:
    """Logits recovered from probabilities (float64), for files that output probabilities.

    Monotone in the probabilities and what :meth:`Tagger._aggregate` expects: log p for
    softmax heads (equal to the logits up to a constant), log(p / (1 - p)) for sigmoid
    heads. Saturated float32 probabilities (exactly 0 or 1) give -inf / inf: their order
    among themselves is lost, as it is in the file's output.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore"):
        if kind == "softmax":
            return np.log(p)
        return np.log(p) - np.log1p(-p)


@dataclass
class WindowScores:
    """Scores of one stretch of audio: times in seconds, probabilities (C,) float32."""

    start: float
    end: float
    probabilities: np.ndarray
    logits: np.ndarray | None = field(default=None, repr=False)
    padded: bool = False  # the audio was shorter than the model window and was centred in zeros
    embedding: np.ndarray | None = field(default=None, repr=False)  # (E,) of one model window


class Tagger:
    """Turn 32 kHz waveforms (or files) into label probabilities with one engine."""

    def __init__(self, engine: Engine, *, dither: float = DEFAULT_DITHER) -> None:
        self.engine = engine
        self.dither = float(dither)
        if not (math.isfinite(self.dither) and 0 <= self.dither <= MAX_DITHER):
            raise DymnEdgeError(f"--dither is a noise standard deviation between 0 (off) and "
                                f"{MAX_DITHER:g} (-20 dBFS; the default is 1e-4), got {dither:g}")
        self.metadata = engine.metadata
        self.frontend_config = engine.metadata.frontend_config
        self.sample_rate = self.frontend_config.sample_rate
        self.waveform = bool(getattr(engine, "takes_waveform", False))
        # waveform files carry the frontend in the graph: no NumPy frontend on that path
        self.frontend = None if self.waveform else LogMelFrontend(self.frontend_config)
        self.labels = labels_of(engine)
        self.window_samples = int(round(self.metadata.window_seconds * self.sample_rate))
        if self.waveform:
            if engine.fixed_samples is not None:
                self.window_samples = int(engine.fixed_samples)
        elif self.engine.fixed_frames is not None:
            # The waveform length whose log-mel has exactly the frames the graph takes.
            self.window_samples = samples_for_frames(self.engine.fixed_frames, self.frontend_config,
                                                     self.metadata.window_seconds)
        _warn_if_not_validated(engine)

    @property
    def fixed(self) -> bool:
        return self.engine.fixed_frames is not None

    @property
    def window_seconds(self) -> float:
        """The model's own window: the natural analysis window."""
        return self.window_samples / self.sample_rate

    def check_window(self, window_s: float) -> int:
        """Samples of an analysis window; fixed-shape files cannot look further than theirs."""
        if not math.isfinite(window_s) or window_s <= 0:
            raise DymnEdgeError(f"--window must be a positive number of seconds, got {window_s:g}")
        if window_s > MAX_WINDOW_S:
            raise DymnEdgeError(f"--window {window_s:g} s is longer than {MAX_WINDOW_S:g} s: one "
                                "inference would hold the whole window in memory; use windows "
                                "of the model's length and --hop")
        n = int(round(window_s * self.sample_rate))
        if n < 2 * self.frontend_config.hop_length:
            raise DymnEdgeError(f"window {window_s:g} s is too short (at least "
                                f"{2 * self.frontend_config.hop_length / self.sample_rate:g} s)")
        if self.fixed and n > self.window_samples:
            raise DymnEdgeError(
                f"{self.engine.path.name} was exported for {self.window_seconds:g} s windows and "
                f"cannot score {window_s:g} s at once; use --window {self.window_seconds:g} or "
                "less, or export a dynamic-time ONNX file")
        return n

    def check_hop(self, hop_s: float, window_s: float | None = None) -> int:
        """Samples of a hop: positive and not longer than the window (no audio is skipped)."""
        window_s = self.window_seconds if window_s is None else window_s
        if not math.isfinite(hop_s) or hop_s <= 0:
            raise DymnEdgeError(f"--hop must be a positive number of seconds, got {hop_s:g}")
        hop = int(round(hop_s * self.sample_rate))
        if hop <= 0:
            raise DymnEdgeError(f"--hop {hop_s:g} s is shorter than one sample")
        if hop > int(round(window_s * self.sample_rate)):
            raise DymnEdgeError(f"--hop {hop_s:g} s is longer than the {window_s:g} s window: the "
                                "audio between windows would never be scored; use a hop <= window")
        return hop

    @property
    def min_samples(self) -> int:
        """Shortest audio worth a score (two frontend hops, 20 ms): less is a broken file."""
        return 2 * self.frontend_config.hop_length

    def _check_length(self, n: int, path: str | Path) -> None:
        if n < self.min_samples:
            raise AudioError(f"{path}: too short to tag ({n} samples = {n / self.sample_rate:.4f} s "
                             f"at {self.sample_rate} Hz; at least {self.min_samples / self.sample_rate:g} s)")

    # -- scoring ------------------------------------------------------------------------
    def prepare(self, segment: np.ndarray, position: int = 0) -> tuple[np.ndarray, bool]:
        """Waveform -> model input (1, 1, n_mels, T) following the rules above.

        Waveform files: the prepared window itself, (1, N) float32.

        ``position`` (the segment's first sample in its recording) seeds the noise floor,
        so the same window gets the same input in file and stream mode.
        """
        x = np.asarray(segment, dtype=np.float32)
        padded = False
        if x.size < self.window_samples or (self.fixed and x.size != self.window_samples):
            padded = x.size < self.window_samples
            x = fit_to_length(x, self.window_samples)
        if self.dither > 0:
            rng = np.random.default_rng([int(position), int(x.size)])
            x = x + rng.normal(0.0, self.dither, x.size).astype(np.float32)
        if self.waveform:
            return x[None], padded
        mel = self.frontend(x)
        if self.fixed:
            t = self.engine.fixed_frames
            if mel.shape[1] < t:
                mel = np.pad(mel, ((0, 0), (0, t - mel.shape[1])), mode="edge")
            mel = mel[:, :t]
        return mel[None, None], padded

    def score(self, segment: np.ndarray, start: float = 0.0, end: float | None = None) -> WindowScores:
        """Probabilities for one stretch of 32 kHz audio (padded to the model window)."""
        mel, padded = self.prepare(segment, int(round(start * self.sample_rate)))
        out, emb = self.engine.run(mel)
        end = start + len(segment) / self.sample_rate if end is None else end
        if self.waveform:  # the graph applied the activation
            probs = np.asarray(out[0], dtype=np.float32)
            return WindowScores(start, end, probs, ranking_key(probs, self.metadata.output_activation),
                                padded, emb[0])
        probs = activation(out[0], self.metadata.output_activation)
        return WindowScores(start, end, probs, out[0], padded, emb[0])

    def score_frames(self, mel: np.ndarray, start: float, end: float) -> WindowScores:
        """Scores of one window given as log-mel frames (n_mels, T), a slice of a
        :class:`~dymn_edge.runtime.rings.LogMelTrack`; fixed-shape files get exactly their
        frame count, as :meth:`prepare` gives them."""
        t = self.engine.fixed_frames
        if t is not None and mel.shape[1] != t:
            mel = np.pad(mel, ((0, 0), (0, max(0, t - mel.shape[1]))), mode="edge")[:, :t]
        out, emb = self.engine.run(mel[None, None])
        probs = activation(out[0], self.metadata.output_activation)
        return WindowScores(start, end, probs, out[0], False, emb[0])

    def windows(self, n_samples: int, window_s: float, hop_s: float) -> list[tuple[int, int]]:
        """(start, end) sample ranges of windowed mode; see the module docstring."""
        win = self.check_window(window_s)
        hop = self.check_hop(hop_s, window_s)
        if n_samples <= win:
            return [(0, n_samples)]
        spans = [(s, s + win) for s in range(0, n_samples - win + 1, hop)]
        if spans[-1][1] < n_samples:
            spans.append((n_samples - win, n_samples))
        return spans

    def tag_windows(self, wave: np.ndarray, window_s: float | None = None,
                    hop_s: float | None = None) -> list[WindowScores]:
        """Per-window scores of a 32 kHz waveform (defaults: model window, hop = window).

        The same windows and inputs as :meth:`iter_file` on a file of this audio.
        """
        window_s = self.window_seconds if window_s is None else window_s
        hop_s = window_s if hop_s is None else hop_s
        x = np.asarray(wave, dtype=np.float32)
        return list(self._iter_windows(iter([x]), self.check_window(window_s),
                                       self.check_hop(hop_s, window_s)))

    def tag_clip(self, wave: np.ndarray) -> WindowScores:
        """One prediction for the whole waveform (see the module docstring)."""
        sr = self.sample_rate
        duration = len(wave) / sr
        if not self.fixed or len(wave) <= self.window_samples:
            return self.score(wave, 0.0, duration)
        parts = self.tag_windows(wave, self.window_seconds, self.window_seconds / 2)
        return self._aggregate(parts, 0.0, duration)

    def _aggregate(self, parts: list[WindowScores], start: float, end: float) -> WindowScores:
        """One clip score from window scores: mean (softmax) or max (sigmoid).

        The ``logits`` of the result are a ranking key with the aggregate's order (max
        logit for sigmoid; mean log-probability for softmax), so saturated probabilities
        still rank correctly (see :meth:`TagFilter.select`).
        """
        z = np.stack([np.asarray(p.logits, dtype=np.float64) for p in parts])
        if self.metadata.output_activation == "softmax":
            logp = z - z.max(axis=1, keepdims=True)
            logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
            agg, key = np.exp(logp).mean(axis=0), logp.mean(axis=0)
        else:
            key = z.max(axis=0)
            agg = activation(key, "sigmoid")
        return WindowScores(start, end, agg.astype(np.float32), key, False)

    def file_is_windowed(self, path: str | Path, window_s: float | None = None,
                         hop_s: float | None = None, windowed: bool | None = None) -> bool:
        """Whether :meth:`iter_file` scores windows: asked for, or the file outlasts the model window.

        A whole-clip score of a file longer than the model window means different things per
        format (a fixed-shape file averages its windows, a dynamic one sees everything at
        once), so the default for such a file is windows of the model's own length.
        """
        if windowed is not None:
            return windowed
        if window_s is not None or hop_s is not None:
            return True
        info = audio_info(path)
        return info.frames * self.sample_rate / info.samplerate > self.window_samples

    def iter_file(self, path: str | Path, window_s: float | None = None,
                  hop_s: float | None = None, windowed: bool | None = None
                  ) -> Iterator[WindowScores]:
        """Scores of an audio file as they are computed, in memory flat in the file's length.

        ``windowed=None`` (default): windows at ``window_s`` / ``hop_s`` (defaults: the model
        window, hop = window) when either is given or the file is longer than the model
        window, else one whole-clip score. The file is read in blocks and resampled with a
        streaming resampler; only the current window is kept. ``windowed=False`` is the
        whole-clip score, which needs the whole clip in memory.
        """
        if not self.file_is_windowed(path, window_s, hop_s, windowed):
            wave = np.concatenate(list(iter_audio_blocks(path, self.sample_rate)) or [np.zeros(0, np.float32)])
            self._check_length(len(wave), path)
            yield self.tag_clip(wave)
            return
        window_s = self.window_seconds if window_s is None else window_s
        hop_s = window_s if hop_s is None else hop_s
        win, hop = self.check_window(window_s), self.check_hop(hop_s, window_s)
        yield from self._iter_windows(iter_audio_blocks(path, self.sample_rate), win, hop,
                                      lambda n: self._check_length(n, path))

    def _iter_windows(self, blocks: Iterator[np.ndarray], win: int, hop: int,
                      check: Callable[[int], None] | None = None) -> Iterator[WindowScores]:
        """Windowed mode over audio arriving in blocks (see the module docstring).

        Log-mel files: a window on the frame grid is a slice of the recording's continuous
        log-mel (:class:`~dymn_edge.runtime.rings.LogMelTrack`, computed once for all
        windows, as the streaming scorer does); the end-aligned window off the grid, a clip
        shorter than one window and waveform files take :meth:`score` on the window's audio.
        ``check(total samples)`` runs before the last window (a too-short file fails there).
        """
        sr = self.sample_rate
        track = None
        if self.frontend is not None:
            frames = self.frontend.num_frames(win)
            # the frames of the next window, plus up to one read block (<= 1 s, see below)
            track = LogMelTrack(self.frontend_config, frames + 2 * sr // self.frontend_config.hop_length + 8,
                                self.dither)
        buf = np.zeros(0, np.float32)
        buf_start = next_start = total = last_end = 0  # absolute sample positions

        def ready() -> Iterator[WindowScores]:
            nonlocal next_start, last_end
            while next_start + win <= total:
                if track is not None and track.on_grid(next_start):
                    mel = track.window(next_start, frames)
                    if mel is None:  # its last frames need audio past its end
                        return
                    yield self.score_frames(mel, next_start / sr, (next_start + win) / sr)
                else:
                    a = next_start - buf_start
                    yield self.score(buf[a:a + win], next_start / sr, (next_start + win) / sr)
                last_end, next_start = next_start + win, next_start + hop

        for block in blocks:
            for i in range(0, block.size, sr):  # 1 s at a time: the frame ring stays small
                part = block[i:i + sr]
                buf = np.concatenate((buf, part)) if buf.size else part
                total += part.size
                if track is not None:
                    track.push(part)
                yield from ready()
                keep_from = max(buf_start, min(next_start, total - win))  # the end-aligned window may need it
                buf, buf_start = buf[keep_from - buf_start:], keep_from
        if track is not None:
            track.flush()  # the recording ends: its last frames use the end reflection
            yield from ready()
        if check is not None:
            check(total)
        if last_end == 0:  # shorter than one window: scored once, padded
            yield self.score(buf, 0.0, total / sr)
        elif last_end < total:  # one more window aligned to the end: no audio is dropped
            a, start = total - win - buf_start, total - win
            mel = track.window(start, frames) if track is not None and track.on_grid(start) else None
            yield (self.score_frames(mel, start / sr, total / sr) if mel is not None
                   else self.score(buf[a:a + win], start / sr, total / sr))

    def tag_file(self, path: str | Path, window_s: float | None = None,
                 hop_s: float | None = None, windowed: bool | None = None) -> list[WindowScores]:
        """All scores of :meth:`iter_file` as a list (``windowed=False``: one whole-clip entry)."""
        return list(self.iter_file(path, window_s, hop_s, windowed))


#: Input frames per block read from a file (about 1.4 s at 48 kHz).
READ_BLOCK_FRAMES = 65536


def _truncation(info) -> str | None:
    """What libsndfile noticed about a cut-off file ("data : 64000 (should be 31978)")."""
    for line in str(getattr(info, "extra_info", "")).splitlines():
        if line.strip().lower().startswith("data") and "should be" in line:
            return " ".join(line.split())
    return None


def iter_audio_blocks(path: str | Path, sample_rate: int = 32000,
                      block_frames: int = READ_BLOCK_FRAMES) -> Iterator[np.ndarray]:
    """Float32 mono blocks of a file at ``sample_rate``: block reading + soxr streaming resampler.

    Memory is one block whatever the file's length. Errors are one-line
    :class:`~dymn_edge.errors.AudioError` naming the file, as in ``read_audio``; a file cut
    off after its header (the header promises more audio than there is) is tagged as far
    as it goes, with a warning.
    """
    p = Path(path)
    info = audio_info(p)
    cut = _truncation(info)
    if cut:
        log.warning("%s: the file is truncated (%s): tagging the audio that is there", p, cut)
    resampler = None
    if info.samplerate != sample_rate:
        resampler = soxr.ResampleStream(info.samplerate, sample_rate, 1, dtype="float32",
                                        quality=DEFAULT_QUALITY)
    n_in = 0
    try:
        with sf.SoundFile(str(p)) as fh:
            for block in fh.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    bad = int((~np.isfinite(block)).sum())
                    raise AudioError(f"audio file {p} contains non-finite samples (NaN or inf) "
                                     f"({bad} in the block at {n_in / info.samplerate:.2f} s)")
                n_in += block.shape[0]
                mono = to_mono(block)
                out = mono if resampler is None else resampler.resample_chunk(mono)
                if out.size:
                    yield np.ascontiguousarray(out, dtype=np.float32)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot decode audio file {p}: {' '.join(str(exc).split())}") from exc
    if n_in == 0:
        raise AudioError(f"audio file {p} holds no samples")
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if tail.size:
            yield np.ascontiguousarray(tail, dtype=np.float32)
