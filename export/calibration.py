"""Audio for calibration and validation, run through the project's own frontend.

Quantization ranges and validation both need inputs that look like what the runtime will
feed: log-mels computed by :class:`dymn_edge.frontend.LogMelFrontend` (the same code the
runtime uses), never random tensors (random mels drive DyMN's logits to ~1e3 and say nothing
about ranges on real input). Calibration audio is the user's (:class:`CalibrationConfig`,
no default); parity runs on a clip shipped with the package (:func:`parity_clip`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from dymn_edge.audio import fit_to_length, read_audio, resample
from dymn_edge.datasets import AUDIO_SUFFIXES, Dataset, fsdd_eval_wave, load_dataset
from dymn_edge.errors import DymnEdgeError, ExportError
from dymn_edge.export.config import CalibrationConfig
from dymn_edge.frontend import LogMelFrontend, frames_for_seconds
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

PARITY_CLIP = "parity_clip.flac"


@dataclass
class MelSet:
    """Log-mels (N, 1, 128, T) float32 and where they came from (said in reports)."""

    mels: np.ndarray
    source: str


def window_samples(window_seconds: float, fc: FrontendConfig) -> int:
    """Samples that give exactly ``round(window * sr / hop)`` frames in the frontend.

    The frontend drops one sample (pre-emphasis) and centres frames, so N samples give
    ``(N - 1) // hop + 1`` frames: ``frames * hop`` samples give exactly the frame count the
    metadata states (``ModelMetadata.window_frames``).
    """
    return mel_frames(window_seconds, fc) * fc.hop_length


def mel_frames(window_seconds: float, fc: FrontendConfig) -> int:
    return frames_for_seconds(window_seconds, fc)


def to_mel(wave: np.ndarray, fc: FrontendConfig, frames: int | None = None) -> np.ndarray:
    """(1, 1, 128, T) float32 log-mel of ``wave``; padded/cropped to ``frames`` when given."""
    mel = LogMelFrontend(fc)(np.asarray(wave, dtype=np.float32))
    if frames is not None and mel.shape[1] != frames:
        if mel.shape[1] > frames:
            mel = mel[:, :frames]
        else:  # pad with the frontend's value for silence
            silent = LogMelFrontend(fc)(np.zeros(fc.hop_length * 4, np.float32))[:, :1]
            mel = np.concatenate([mel, np.repeat(silent, frames - mel.shape[1], axis=1)], axis=1)
    return np.ascontiguousarray(mel[None, None], dtype=np.float32)


def audio_files(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` (recursive), sorted for reproducibility."""
    root = Path(folder).expanduser()
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) under {root}")
    return files


def _spread(items: list, n: int) -> list:
    """``n`` items evenly spread over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def calibration_mels(cal: CalibrationConfig, window_seconds: float, fc: FrontendConfig, *,
                     progress: bool = False) -> MelSet:
    """``cal.count`` calibration log-mels at the export window, from ``cal.source``.

    A labelled set with a ``train`` split gives its train clips (spread evenly over the
    split, each by the set's own evaluation recipe); any other folder gives its audio files
    (spread evenly), each centre-cropped / zero-padded to the window.
    """
    frames = mel_frames(window_seconds, fc)
    n_samples = window_samples(window_seconds, fc)
    waves: list[np.ndarray] = []
    train = _train_split(cal.source)
    if train is not None:
        clips = _spread(train.clips, cal.count)
        for c in _progress(clips, progress, "calibration audio"):
            wave = fsdd_eval_wave(c.path) if train.layout == "fsdd" else read_audio(c.path, fc.sample_rate)
            waves.append(fit_to_length(wave, n_samples))
        source = f"{len(clips)} {train.name} clips of {cal.source.name}"
    else:
        files = _spread(audio_files(cal.source), cal.count)
        for f in _progress(files, progress, "calibration audio"):
            waves.append(fit_to_length(read_audio(f, fc.sample_rate), n_samples))
        source = f"{len(files)} audio files of {cal.source.name}"
    mels = np.concatenate([to_mel(w, fc, frames) for w in waves], axis=0)
    log.info("calibration: %s", source)
    return MelSet(mels, source)


def _train_split(folder: Path) -> Dataset | None:
    """The ``train`` split of a recognised labelled set in ``folder``, else None."""
    try:
        return load_dataset(folder, split="train")
    except DymnEdgeError:
        return None


def parity_clip() -> tuple[np.ndarray, int]:
    """The clip every export's parity check runs on (package data, 16 kHz mono, 11 s).

    A real recording: speech (J. F. Kennedy's inaugural address, 1961; public domain, see
    ``data/PARITY_CLIP_LICENSE.md``). Shipped with the package so that an export from a
    wheel validates on real audio, the same input as one from a checkout.
    """
    with resources.as_file(resources.files("dymn_edge") / "data" / PARITY_CLIP) as path:
        x, sr = sf.read(str(path), dtype="float32")
    return x, int(sr)


def validation_waves(window_seconds: float, fc: FrontendConfig, *, lengths: list[float]
                     ) -> tuple[list[tuple[str, np.ndarray]], str]:
    """Segments of the parity clip for parity checks: one per entry of ``lengths`` (seconds).

    Segments start at different offsets so that two equal lengths are still different audio.
    A length above the clip's is made by looping it.
    """
    raw, sr = parity_clip()
    x = resample(raw, sr, fc.sample_rate)
    source = f"{PARITY_CLIP} (real speech recording shipped with dymn-edge, public domain)"
    out = []
    for i, sec in enumerate(lengths):
        n = window_samples(sec, fc)
        reps = int(np.ceil((n + len(x)) / len(x)))
        loop = np.tile(x, reps)
        start = int((i * 0.37 * len(x)) % len(x))
        out.append((f"{sec:g} s @ {start / fc.sample_rate:.2f} s", loop[start:start + n]))
    return out, source


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    return tqdm(items, desc=desc, unit="clip", leave=False)
