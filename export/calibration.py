"""Real audio for calibration and validation, run through the project's own frontend.

Quantization ranges and validation both need inputs that look like what the runtime will
feed: log-mels of real audio computed by :class:`dymn_edge.frontend.LogMelFrontend` (the same
code the runtime uses), never random tensors (random mels drive DyMN's logits to ~1e3 and
say nothing about ranges on real input).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


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
    return int(round(window_seconds * fc.sample_rate / fc.hop_length))


def to_mel(wave: np.ndarray, fc: FrontendConfig, frames: int | None = None) -> np.ndarray:
    """(1, 1, 128, T) float32 log-mel of ``wave``; padded/cropped to ``frames`` when given."""
    from dymn_edge.frontend import LogMelFrontend  # noqa: PLC0415

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


def calibration_mels(folder: str | Path | None, n: int, window_seconds: float,
                     fc: FrontendConfig, *, progress: bool = False) -> MelSet:
    """``n`` calibration log-mels at the export window.

    From ``folder`` (any audio, centre-cropped / zero-padded to the window), or by default
    the FSDD ``train`` clips (never the test split that accuracy is measured on) plus the
    metro field recording, when the shared reference data is present. Raises ExportError
    saying what is missing otherwise.
    """
    from dymn_edge.audio import fit_to_length, read_audio  # noqa: PLC0415

    frames = mel_frames(window_seconds, fc)
    n_samples = window_samples(window_seconds, fc)
    waves: list[np.ndarray] = []
    if folder is not None:
        files = _spread(audio_files(folder), n)
        source = f"{len(files)} clips from {folder}"
        for f in _progress(files, progress, "calibration audio"):
            waves.append(fit_to_length(read_audio(f, fc.sample_rate), n_samples))
    else:
        from dymn_edge.datasets import default_fsdd_dir, fsdd_eval_wave, load_dataset  # noqa: PLC0415

        fsdd = default_fsdd_dir()
        if fsdd is None:
            raise ExportError("int8 needs calibration audio: pass --calibration DIR (a folder of "
                              "representative audio files); the built-in default (FSDD train "
                              "clips under shared/datasets/fsdd) is not on this machine")
        clips = _spread(load_dataset(fsdd, split="train").clips, n)
        for c in _progress(clips, progress, "calibration audio"):
            waves.append(fit_to_length(fsdd_eval_wave(c.path), n_samples))
        source = f"{len(clips)} FSDD train clips ({fsdd})"
        metro = reference_recording()
        if metro is not None and window_seconds <= 10.0:
            x = read_audio(metro, fc.sample_rate)
            starts = np.linspace(0, max(len(x) - n_samples, 0), 4).astype(int)
            waves += [fit_to_length(x[s:s + n_samples], n_samples) for s in starts]
            source += " + 4 segments of the metro recording"
    mels = np.concatenate([to_mel(w, fc, frames) for w in waves], axis=0)
    log.info("calibration: %s", source)
    return MelSet(mels, source)


def reference_recording() -> Path | None:
    """The real 10 s field recording of the shared reference data, if present."""
    from dymn_edge.datasets import shared_dir  # noqa: PLC0415

    p = shared_dir() / "reference" / "metro_station-paris.wav"
    return p if p.is_file() else None


def synthetic_wave(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Deterministic stand-in for real audio: chirps, a tone burst train and pink-ish noise."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    chirp = np.sin(2 * np.pi * (200 + 1500 * (t % 2.0)) * t)
    bursts = np.sin(2 * np.pi * 880 * t) * (np.sin(2 * np.pi * 2.0 * t) > 0.6)
    noise = np.cumsum(rng.standard_normal(n)) * 1e-3
    noise -= np.convolve(noise, np.ones(512) / 512, mode="same")
    x = 0.2 * chirp + 0.2 * bursts + 0.5 * noise + 0.01 * rng.standard_normal(n)
    return (0.5 * x / max(1e-9, float(np.abs(x).max()))).astype(np.float32)


def validation_waves(window_seconds: float, fc: FrontendConfig, *, lengths: list[float]
                     ) -> tuple[list[tuple[str, np.ndarray]], str]:
    """Real-audio segments for parity checks: one per entry of ``lengths`` (seconds).

    Segments start at different offsets so that two equal lengths are still different audio.
    A length above the recording's is made by looping it. Falls back to a deterministic
    synthetic signal (and says so) when the metro recording is absent.
    """
    from dymn_edge.audio import read_audio  # noqa: PLC0415

    metro = reference_recording()
    if metro is not None:
        x = read_audio(metro, fc.sample_rate)
        source = f"real audio ({metro.name})"
    else:
        x = synthetic_wave(12.0, fc.sample_rate)
        source = "synthetic signal (metro recording not found)"
        log.warning("validation uses a %s", source)
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
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(items, desc=desc, unit="clip", leave=False)
