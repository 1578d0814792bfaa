"""Labelled audio folders for accuracy checks and calibration (torch-free).

:func:`load_dataset` recognises four layouts by their files, so a user points at a folder and
nothing else. Each is one row of :data:`LAYOUTS` (how it is detected, how its clips are
listed, how a clip is read for scoring): calibration, validation and ``dymn-bench --data``
all go through it, so a new layout is one row. :data:`AUDIO_SUFFIXES` is the one list of
audio file suffixes (a plain folder walked by ``--calibration DIR`` and ``dymn-tag DIR``
finds the same files, :func:`find_audio`).

- **FSDD**: ``split.csv`` (``path,label,speaker,split``) and
  ``labels.csv`` (``index,display_name``); ``split`` selects e.g. ``"test"``.
- **ESC-50**: ``meta/esc50.csv`` (``filename,fold,target,category,...``) with audio in
  ``audio/``; ``split`` is a fold number (``"1"`` .. ``"5"``).
- **AudioSet evaluation CSV** (``eval_segments.csv`` style: ``# YTID, start_seconds,
  end_seconds, positive_labels``, quoted comma-separated mids) with the clips as
  ``<YTID>*.wav`` in the same folder; labels are the 527 AudioSet classes.
- **Generic**: ``labels.csv`` with ``path,label`` where ``label`` is a class index, a display
  name or an AudioSet mid; several labels separated by ``;`` make the set multi-label. Names
  resolve against ``labels`` (default: AudioSet), or a ``classes.csv`` (``index,display_name``
  [,mid]) beside it.

Anything else fails with one :class:`~dymn_edge.errors.DymnEdgeError` line that says what was
expected.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.audio import fit_to_length, read_audio
from dymn_edge.errors import AudioError, DymnEdgeError, LabelsError
from dymn_edge.labels import Label, audioset_labels, read_labels_csv, resolve_label

log = logging.getLogger(__name__)

#: Audio file suffixes (what libsndfile decodes): the files a folder walk picks up.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                  ".snd", ".caf", ".w64", ".rf64", ".wv")

# FSDD evaluation recipe (how the reference accuracy 0.9667 was measured): 8 kHz -> 32 kHz, 1 s window, tiny noise.
FSDD_RATE = 8000
FSDD_EVAL_RATE = 32000
FSDD_WINDOW = 32000
FSDD_NOISE_STD = 1e-4


@dataclass
class Clip:
    """One audio file and the class indices it is labelled with."""

    path: Path
    targets: list[int]
    #: who or what recorded it (FSDD speaker, ESC-50 fold): clips of one group are held out
    #: together when int8 is checked on audio its calibration did not use
    group: str | None = None


@dataclass
class Dataset:
    """Clips plus the label set their targets index into."""

    name: str
    clips: list[Clip]
    labels: list["Label"]
    multilabel: bool
    layout: str = "generic"
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        return len(self.clips)

    def targets_onehot(self) -> np.ndarray:
        """(N, C) float32 0/1 matrix, the form the metrics take."""
        out = np.zeros((len(self.clips), len(self.labels)), dtype=np.float32)
        for i, clip in enumerate(self.clips):
            out[i, clip.targets] = 1.0
        return out

    def read(self, clip: Clip, sample_rate: int = 32000) -> np.ndarray:
        """One clip as mono float32 at ``sample_rate``, by its layout's recipe (FSDD's is the
        one its reference accuracy was measured with, already at 32 kHz and 1 s)."""
        return LAYOUT_BY_NAME[self.layout].read(clip.path, sample_rate)

    def target_indices(self) -> np.ndarray:
        """(N,) first target of each clip: the class for single-label accuracy."""
        return np.array([c.targets[0] if c.targets else -1 for c in self.clips], dtype=np.int64)


# ---------------------------------------------------------------------------------------
# FSDD's evaluation recipe


def fsdd_eval_wave(path: str | Path) -> np.ndarray:
    """One FSDD clip prepared exactly as the reference accuracy (0.9667) was measured.

    8 kHz -> 32 kHz with ``scipy.signal.resample_poly(x, 4, 1)``; centred in (zero padding)
    or centre-cropped to a 1 s window of 32000 samples; plus Gaussian noise of std 1e-4 drawn
    from ``np.random.default_rng(n)`` where ``n`` is the length of the *original 8 kHz* clip.
    "Seeded by length" in the reference README is read that way: it makes every clip's noise
    reproducible without a global seed and independent of evaluation order.
    """
    import soundfile as sf  # noqa: PLC0415
    from scipy.signal import resample_poly  # noqa: PLC0415

    p = Path(path)
    try:
        x, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as exc:
        raise AudioError(f"{p}: cannot read audio ({exc})") from exc
    x = x.mean(axis=1)
    if sr != FSDD_RATE:
        raise DymnEdgeError(f"{p}: FSDD clips are {FSDD_RATE} Hz, this one is {sr} Hz")
    n_orig = len(x)
    out = fit_to_length(resample_poly(x, 4, 1).astype(np.float32), FSDD_WINDOW)
    rng = np.random.default_rng(n_orig)
    out += rng.normal(0.0, FSDD_NOISE_STD, FSDD_WINDOW).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------
# Layouts


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in rows]


def _need_columns(path: Path, rows: list[dict[str, str]], cols: tuple[str, ...]) -> None:
    have = set(rows[0]) if rows else set()
    missing = [c for c in cols if c not in have]
    if missing:
        raise DymnEdgeError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(expected {', '.join(cols)})")


def _check_split(name: str, split: str | None, available: list[str], clips: list[Clip]) -> None:
    if split is not None and not clips:
        raise DymnEdgeError(f"{name}: no clips in split '{split}' "
                            f"(available: {', '.join(sorted(set(available)))})")


def _load_fsdd(root: Path, split: str | None) -> Dataset:
    labels = read_labels_csv(root / "labels.csv")
    rows = _read_csv_rows(root / "split.csv")
    _need_columns(root / "split.csv", rows, ("path", "label", "split"))
    clips = [
        Clip(root / r["path"], [_int_label(r["label"], len(labels), root / "split.csv")],
             r.get("speaker") or None)
        for r in rows if split is None or r["split"] == str(split)
    ]
    _check_split(str(root), split, [r["split"] for r in rows], clips)
    return Dataset("fsdd" + (f":{split}" if split else ""), clips, labels, False, "fsdd")


def _load_esc50(root: Path, split: str | None) -> Dataset:
    meta = root / "meta" / "esc50.csv"
    rows = _read_csv_rows(meta)
    _need_columns(meta, rows, ("filename", "fold", "target", "category"))
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(int(r["target"]), r["category"].replace("_", " "))
    labels = [Label(i, None, names.get(i, f"class {i}")) for i in range(max(names) + 1)]
    clips = [
        Clip(root / "audio" / r["filename"], [int(r["target"])], f"fold{r['fold']}")
        for r in rows if split is None or r["fold"] == str(split)
    ]
    _check_split(str(root), split, [r["fold"] for r in rows], clips)
    return Dataset("esc50" + (f":fold{split}" if split else ""), clips, labels, False, "esc50")


def _audioset_csv(root: Path) -> Path | None:
    """A CSV in ``root`` whose header comment is AudioSet's ``# YTID, start_seconds, ...``."""
    for p in sorted(root.glob("*.csv")):
        try:
            with p.open(encoding="utf-8") as fh:
                head = [fh.readline() for _ in range(3)]
        except (OSError, UnicodeDecodeError):
            continue
        if any(line.lstrip().startswith("# YTID") for line in head):
            return p
    return None


def _load_audioset(root: Path, csv_path: Path, labels: list["Label"] | None) -> Dataset:
    labels = labels if labels is not None else audioset_labels()
    by_mid = {lab.mid: lab.index for lab in labels if lab.mid}
    files: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.suffix.lower() in AUDIO_SUFFIXES:
            files.setdefault(p.stem, p)
    clips: list[Clip] = []
    missing = 0
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, skipinitialspace=True):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise DymnEdgeError(f"{csv_path}: row '{','.join(row)}' has fewer than 4 fields")
            ytid, mids = row[0], row[3]
            path = files.get(ytid) or next(
                (p for stem, p in files.items() if stem.startswith(ytid)), None)
            if path is None:
                missing += 1
                continue
            targets = []
            for mid in mids.split(","):
                mid = mid.strip().strip('"')
                if mid not in by_mid:
                    raise LabelsError(f"{csv_path}: unknown AudioSet label '{mid}' for {ytid}")
                targets.append(by_mid[mid])
            clips.append(Clip(path, sorted(set(targets))))
    if missing:
        log.info("%s: %d listed clips have no audio file in %s", csv_path.name, missing, root)
    if not clips:
        raise DymnEdgeError(f"{csv_path}: none of the listed YouTube ids has a <YTID>*.wav "
                            f"file in {root}")
    return Dataset(f"audioset:{csv_path.stem}", clips, labels, True, "audioset",
                   {"missing_clips": missing})


def _int_label(text: str, n: int, where: Path) -> int:
    try:
        i = int(text)
    except ValueError as exc:
        raise LabelsError(f"{where}: label '{text}' is not a class index") from exc
    if not 0 <= i < n:
        raise LabelsError(f"{where}: class index {i} is outside 0..{n - 1}")
    return i


def _load_generic(root: Path, labels: list["Label"] | None) -> Dataset:
    if labels is None:
        classes = root / "classes.csv"
        labels = read_labels_csv(classes) if classes.is_file() else audioset_labels()
    path = root / "labels.csv"
    rows = _read_csv_rows(path)
    _need_columns(path, rows, ("path", "label"))
    clips: list[Clip] = []
    multilabel = False
    for r in rows:
        parts = [s.strip() for s in r["label"].split(";") if s.strip()]
        if not parts:
            raise LabelsError(f"{path}: clip '{r['path']}' has no label")
        multilabel |= len(parts) > 1
        targets = []
        for name in parts:
            if name.isdigit():
                targets.append(_int_label(name, len(labels), path))
            else:
                targets.append(resolve_label(labels, name).index)
        clip_path = Path(r["path"])
        clips.append(Clip(clip_path if clip_path.is_absolute() else root / clip_path,
                          sorted(set(targets))))
    if not clips:
        raise DymnEdgeError(f"{path}: no clips listed")
    return Dataset(root.name or "dataset", clips, labels, multilabel, "generic")


def _read_resampled(path: Path, sample_rate: int) -> np.ndarray:
    return read_audio(path, sample_rate)


@dataclass(frozen=True)
class Layout:
    """One dataset layout: a row of :data:`LAYOUTS`."""

    name: str
    title: str
    #: what the folder must hold, said when no layout matches
    expects: str
    #: the folder -> a truthy value when it is this layout (handed to ``load``), else None
    detect: Callable[[Path], Any]
    #: (folder, detect's value, split, labels) -> the clips and labels
    load: Callable[[Path, Any, str | None, list[Label] | None], Dataset]
    #: (clip path, sample rate) -> mono float32 audio, the layout's scoring recipe
    read: Callable[[Path, int], np.ndarray] = _read_resampled
    #: it has splits (FSDD's split column, ESC-50's folds) and the one scored by default
    splits: bool = False
    eval_split: str | None = None


def _is_file(*parts: str) -> Callable[[Path], bool]:
    return lambda root: all((root / p).is_file() for p in parts)


#: The layouts in detection order (the first whose ``detect`` holds wins).
LAYOUTS: tuple[Layout, ...] = (
    Layout("fsdd", "FSDD", "FSDD split.csv + labels.csv", _is_file("split.csv", "labels.csv"),
           lambda root, _, split, labels: _load_fsdd(root, split), read=lambda p, sr: fsdd_eval_wave(p),
           splits=True, eval_split="test"),
    Layout("esc50", "ESC-50", "ESC-50 meta/esc50.csv", _is_file("meta/esc50.csv"),
           lambda root, _, split, labels: _load_esc50(root, split), splits=True),
    Layout("audioset", "AudioSet CSV", "an AudioSet '# YTID,...' CSV", _audioset_csv,
           lambda root, csv_path, split, labels: _load_audioset(root, csv_path, labels)),
    Layout("generic", "generic", "labels.csv with path,label", _is_file("labels.csv"),
           lambda root, _, split, labels: _load_generic(root, labels)),
)
LAYOUT_BY_NAME = {lay.name: lay for lay in LAYOUTS}


def detect_layout(path: str | Path) -> tuple[Layout, Any] | None:
    """The layout of the folder ``path`` and what its detection found, or None."""
    root = Path(path).expanduser()
    for lay in LAYOUTS:
        if root.is_dir() and (found := lay.detect(root)):
            return lay, found
    return None


def find_audio(folder: str | Path) -> list[Path]:
    """Audio files (:data:`AUDIO_SUFFIXES`) under ``folder``, recursive, sorted."""
    root = Path(folder).expanduser()
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def load_dataset(path: str | Path, *, split: str | int | None = None,
                 labels: list["Label"] | None = None) -> Dataset:
    """Clips and labels of the folder ``path``, its layout detected from its files.

    ``split`` selects FSDD's ``split`` column or ESC-50's fold; ``labels`` overrides the label
    set that names/mids resolve against (AudioSet CSV and generic layouts).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DymnEdgeError(f"{root}: dataset folder not found")
    split_s = None if split is None else str(split)
    hit = detect_layout(root)
    if hit is None:
        raise DymnEdgeError(f"{root}: unknown dataset layout (expected "
                            + ", ".join(lay.expects for lay in LAYOUTS[:-1]) + f", or {LAYOUTS[-1].expects})")
    lay, found = hit
    if split_s is not None and not lay.splits:
        raise DymnEdgeError(f"{root}: --split applies to "
                            + " and ".join(x.title for x in LAYOUTS if x.splits) + " layouts only")
    ds = lay.load(root, found, split_s, labels)
    log.debug("dataset %s: %d clips, %d classes", ds.name, len(ds.clips), len(ds.labels))
    return ds
