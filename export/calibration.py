"""Audio for calibration and validation, run through the project's own frontend.

Quantization ranges and validation both need inputs that look like what the runtime will
feed: log-mels computed by :class:`dymn_edge.frontend.LogMelFrontend` (the same code the
runtime uses), never random tensors (random mels drive DyMN's logits to ~1e3 and say nothing
about ranges on real input). Calibration audio is the user's (:class:`CalibrationConfig`,
no default); parity runs on a clip shipped with the package (:func:`parity_clip`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from dymn_edge.audio import fit_to_length, read_audio, resample
from dymn_edge.datasets import AUDIO_SUFFIXES, Clip, Dataset, find_audio, load_dataset
from dymn_edge.errors import DymnEdgeError, ExportError
from dymn_edge.export.config import CalibrationConfig
from dymn_edge.frontend import LogMelFrontend, frames_for_seconds
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

PARITY_CLIP = "parity_clip.flac"


@dataclass
class MelSet:
    """Log-mels (N, 1, 128, T) float32 and where they came from (said in reports).

    ``files``: the audio files, one per mel; ``targets``: (N, C) one-hot rows when the folder
    is a labelled set. A calibration set carries its ``heldout`` part: audio of the same
    folder that calibration did not use (``split`` says how the folder was divided).
    """

    mels: np.ndarray
    source: str
    files: list[Path] = field(default_factory=list)
    targets: np.ndarray | None = None
    multilabel: bool = False
    heldout: "MelSet | None" = None
    split: str = ""


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
    files = find_audio(root)
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
    """``cal.count`` calibration log-mels at the export window, and the held-out part.

    The folder is split first (:func:`split_folder`): calibration never sees the held-out
    clips, on which the int8 file is measured against fp32. A labelled set with a ``train``
    split gives the train clips of its calibration part (spread evenly, each by the set's own
    evaluation recipe; never the test split accuracy is measured on); any other folder gives
    the audio files of its calibration part (spread evenly), each centre-cropped /
    zero-padded to the window. Held-out clips come from every split, with their labels.
    """
    sp = split_folder(cal)
    clips = _spread(sp.calibration, cal.count)
    held = _spread(sp.heldout, cal.heldout_count)
    source = f"{len(clips)} {sp.pool} of {cal.source.name}"
    out = _mel_set(clips, sp.dataset, window_seconds, fc, progress, source)
    out.split = sp.description
    out.heldout = _mel_set(held, sp.dataset, window_seconds, fc, progress,
                           f"{len(held)} held-out clips of {cal.source.name}")
    log.info("calibration: %s; held out: %s", source, sp.description)
    return out


@dataclass
class FolderSplit:
    """A calibration folder divided into the part calibration uses and the part it never sees."""

    calibration: list[Clip]
    heldout: list[Clip]
    description: str  # how it was split, said in the report and the file's metadata
    dataset: Dataset | None  # the labelled set, None for a plain folder of audio
    pool: str  # what calibration clips are ("fsdd:train clips", "audio files")


def split_folder(cal: CalibrationConfig) -> FolderSplit:
    """The folder ``cal.source`` split into calibration and held-out clips.

    Deterministic, so a file records a split anyone can redo:

    - a set whose clips name a group (FSDD's ``speaker`` column, ESC-50's fold) or whose file
      names all read ``{label}_{group}_{index}`` (FSDD's recordings as a plain folder): one
      group is held out, ``cal.holdout`` or else the last by name, so the held-out audio is
      not from a calibrated speaker; calibration takes the other groups (their ``train`` split
      when the set has one);
    - any other folder: a seeded shuffle (seed 0) of its files, a quarter held out.

    Labels come with the clips when :func:`dymn_edge.datasets.load_dataset` recognises the
    folder; otherwise clips carry no targets and the check is agreement with fp32.
    """
    ds = _labelled_set(cal.source)
    clips = ds.clips if ds is not None else [Clip(f, [], _name_group(f)) for f in audio_files(cal.source)]
    if ds is not None and all(c.group is None for c in clips):
        clips = [Clip(c.path, c.targets, _name_group(c.path)) for c in clips]
    groups = sorted({c.group for c in clips if c.group is not None})
    if len(groups) >= 2 and all(c.group is not None for c in clips):
        held = cal.holdout if cal.holdout is not None else groups[-1]
        if held not in groups:
            raise ExportError(f"--calibration {cal.source.name}: no group '{held}' to hold out "
                              f"(groups: {', '.join(groups)})")
        train = _train_split(cal.source)
        pool = train.clips if train is not None else clips
        calib = [c for c in pool if c.group != held]
        heldout = [c for c in clips if c.group == held]
        kind = "fold" if ds is not None and ds.layout == "esc50" else "speaker"
        split = (f"{kind} {held} held out ({len(heldout)} clips; calibration from "
                 f"{', '.join(g for g in groups if g != held)})")
        return _checked(FolderSplit(calib, heldout, split, ds, _pool_name(ds, train)), cal)
    if cal.holdout is not None:
        raise ExportError(f"--calibration {cal.source.name}: its clips name no groups (speakers), "
                          f"so there is no group '{cal.holdout}' to hold out")
    if len(clips) < 2:
        raise ExportError(f"--calibration {cal.source.name}: {len(clips)} audio file; calibrated int8 "
                          "needs at least 2 (a part is held out to measure the int8 file on)")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(clips))
    n_held = max(1, int(round(len(clips) * HOLDOUT_FRACTION)))
    heldout = [clips[i] for i in sorted(order[:n_held])]
    calib = [clips[i] for i in sorted(order[n_held:])]
    train = _train_split(cal.source)
    if train is not None:  # a labelled set's test split is for accuracy, never for calibration
        in_train = {c.path for c in train.clips}
        calib = [c for c in calib if c.path in in_train]
    split = f"seeded file split (seed {HOLDOUT_SEED}): {n_held} of {len(clips)} files held out"
    return _checked(FolderSplit(calib, heldout, split, ds, _pool_name(ds, train)), cal)


def _checked(sp: FolderSplit, cal: CalibrationConfig) -> FolderSplit:
    if not sp.calibration:
        raise ExportError(f"--calibration {cal.source.name}: no calibration clips left after the "
                          f"held-out part ({sp.description})")
    return sp


def _pool_name(ds: Dataset | None, train: Dataset | None) -> str:
    if train is not None:
        return f"{train.name} clips"
    return "clips" if ds is not None else "audio files"


#: the seeded file split (folders whose clips name no group)
HOLDOUT_SEED = 0
HOLDOUT_FRACTION = 0.25

#: ``{label}_{group}_{index}`` (FSDD's ``7_theo_12.wav``)
_GROUPED_NAME = re.compile(r"^[^_]+_(?P<group>[^_]+)_\d+$")


def _name_group(path: Path) -> str | None:
    m = _GROUPED_NAME.match(path.stem)
    return m.group("group") if m else None


def _labelled_set(folder: Path) -> Dataset | None:
    """Every clip of a recognised labelled set in ``folder``, else None."""
    try:
        return load_dataset(folder)
    except DymnEdgeError:
        return None


def _mel_set(clips: list[Clip], ds: Dataset | None, window_seconds: float, fc: FrontendConfig,
             progress: bool, source: str) -> MelSet:
    """Log-mels of ``clips`` at the window (a labelled set's clips by its layout's recipe:
    FSDD's evaluation one), with targets."""
    frames = mel_frames(window_seconds, fc)
    n_samples = window_samples(window_seconds, fc)
    waves = []
    for c in _progress(clips, progress, "calibration audio"):
        wave = ds.read(c, fc.sample_rate) if ds is not None else read_audio(c.path, fc.sample_rate)
        waves.append(fit_to_length(wave, n_samples))
    mels = np.concatenate([to_mel(w, fc, frames) for w in waves], axis=0)
    targets = None
    if ds is not None:
        targets = np.zeros((len(clips), ds.num_classes), np.float32)
        for i, c in enumerate(clips):
            targets[i, c.targets] = 1.0
    return MelSet(mels, source, [c.path for c in clips], targets, bool(ds is not None and ds.multilabel))


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
