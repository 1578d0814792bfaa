"""Event clips: the audio of each event as a FLAC file (``dymn-listen --clips DIR``).

A ring of the most recent 32 kHz audio (``pre + MAX_CLIP_SECONDS + post`` seconds) is
kept; when an event ends, its clip ``[start - pre, end + post]`` is written once the
post-padding audio has arrived (on a stop, with what there is). Files go to
``DIR/YYYY-MM-DD/YYYYMMDDTHHMMSS.mmmZ_<label>.flac`` (UTC start time, so names sort in
time order), written to a temporary name and renamed, so a power cut never leaves half a
clip under a real name. The path is set on the event (``ev.clip``) before the database
sink sees it.

Never fills the disk: at the start, after each clip and every 10 minutes of audio, clips
older than ``max_days`` and then the oldest clips beyond ``max_mb`` in total are deleted
(a clip just written is kept; only files named like clips are ever touched); below ``min_free_mb`` of free space no clip is written
and that is said once (and once more when writing resumes).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from dymn_edge.cliutil import check_writable_folder
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.events import Event
from dymn_edge.runtime.sinks import EventSink
from dymn_edge.runtime.rings import AudioRing

log = logging.getLogger(__name__)

__all__ = ["ClipRecorder", "ClipsError", "MAX_CLIP_SECONDS", "apply_retention", "check_clip_options", "clip_files"]

#: Longest clip (without padding); a longer event keeps its last MAX_CLIP_SECONDS.
MAX_CLIP_SECONDS = 60.0
#: Stream seconds between age checks when no clip is written (quiet weeks still expire).
RETENTION_EVERY_S = 600.0
CLIP_RE = re.compile(r"^(\d{8}T\d{6}\.\d{3})Z_[^/]*\.flac$")


class ClipsError(DymnEdgeError):
    """A clips folder that cannot be created or written."""


@dataclass
class _Pending:
    first: int  # absolute sample index (stream clock) of the clip's first sample
    stop: int  # one past its last sample
    path: Path


def _slug(name: str, index: int) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60]
    return s or f"label{index}"


def _clip_time(path: Path) -> float | None:
    m = CLIP_RE.match(path.name)
    if not m:
        return None
    t = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def clip_files(root: Path) -> list[tuple[str, Path, int]]:
    """(name, path, bytes) of every file under ``root`` named like a clip, oldest first."""
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if CLIP_RE.match(n):
                p = Path(dirpath) / n
                try:
                    out.append((n, p, p.stat().st_size))
                except FileNotFoundError:  # deleted meanwhile
                    continue
    out.sort(key=lambda r: r[0])
    return out


def apply_retention(root: Path, *, max_bytes: int | None, max_days: float | None,
                    keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Delete clips older than ``max_days``, then the oldest beyond ``max_bytes`` in total.

    ``keep`` (the clip just written) is never deleted. Returns the deleted paths, oldest first.
    """
    files = clip_files(root)
    now = time.time() if now is None else now
    deleted: list[Path] = []
    keep_r = keep.resolve() if keep is not None else None

    def _delete(p: Path) -> None:
        try:
            p.unlink()
            deleted.append(p)
        except FileNotFoundError:
            pass
        # the dashboard's cached spectrogram (NAME.png beside NAME.flac) goes with its clip
        p.with_suffix(".png").unlink(missing_ok=True)
        try:  # drop the day folder once empty
            if p.parent != root and not any(p.parent.iterdir()):
                p.parent.rmdir()
        except OSError:
            pass

    remaining = []
    for name, p, size in files:
        t = _clip_time(p)
        if max_days is not None and t is not None and now - t > max_days * 86400 and p.resolve() != keep_r:
            _delete(p)
        else:
            remaining.append((name, p, size))
    if max_bytes is not None:
        total = sum(size for _, _, size in remaining)
        for _, p, size in remaining:
            if total <= max_bytes:
                break
            if p.resolve() == keep_r:
                continue
            _delete(p)
            total -= size
    if deleted:
        log.info("clips retention: deleted %d clip(s), oldest %s", len(deleted), deleted[0].name)
    return deleted


#: Longest --clips-pre / --clips-post: the audio ring holds both (32 kHz float32, 128 kB a second).
MAX_PADDING_SECONDS = 600.0


def check_clip_options(root: str | Path, *, pre: float, post: float, max_mb: float | None,
                       max_days: float | None) -> None:
    """The recorder's option checks, also run by ``--print-systemd-unit`` (nothing created)."""
    if not (pre >= 0 and post >= 0):  # nan fails too
        raise ClipsError(f"clip padding must be >= 0 s (pre {pre:g}, post {post:g})")
    if max(pre, post) > MAX_PADDING_SECONDS:  # the ring holds pre + post: 1e9 s is 128 TB of audio
        raise ClipsError(f"clip padding must be <= {MAX_PADDING_SECONDS:g} s (pre {pre:g}, post {post:g})")
    if max_mb is not None and not max_mb > 0:
        raise ClipsError(f"--clips-max-mb must be positive, got {max_mb:g}")
    if max_days is not None and not max_days > 0:
        raise ClipsError(f"--clips-max-days must be positive, got {max_days:g}")
    if Path(root).exists() and not Path(root).is_dir():
        raise ClipsError(f"clips folder {root} is not a folder")
    if Path(root).is_dir() and not os.access(root, os.W_OK | os.X_OK):
        raise ClipsError(f"clips folder {root} is not writable")
    parent = next((a for a in Path(root).absolute().parents if a.exists()), None)
    if not Path(root).exists() and parent is not None:  # it will be created: a probe, not permission bits
        if not parent.is_dir():
            raise ClipsError(f"clips folder {root} cannot be created: {parent} is a file")
        check_writable_folder(parent, f"clips folder {root} cannot be created", ClipsError)


class ClipRecorder(EventSink):
    """Sink writing one FLAC clip per closed event, with retention."""

    name = "clips"

    def __init__(self, root: str | Path, *, pre: float = 1.0, post: float = 1.0,
                 max_mb: float | None = None, max_days: float | None = None,
                 min_free_mb: float = 200.0, sample_rate: int = 32000) -> None:
        check_clip_options(root, pre=pre, post=post, max_mb=max_mb, max_days=max_days)
        self.root = Path(root)
        self.pre, self.post = float(pre), float(post)
        self.max_bytes = None if max_mb is None else int(max_mb * 1e6)
        self.max_days = max_days
        self.min_free = int(min_free_mb * 1e6)
        self.sr = int(sample_rate)
        self.ring = AudioRing(int((self.pre + MAX_CLIP_SECONDS + self.post) * self.sr) + 1)
        self._end = 0  # absolute sample index one past the ring's newest sample
        self.pending: list[_Pending] = []
        self.written = 0
        self.deleted = 0
        self.skipped_low_space = 0
        self._low_space = False
        self._last_retention = 0.0  # stream time of the last retention pass
        self.reopen()
        self._retention(None)

    def reopen(self) -> None:
        """(Re)create the folder (SIGHUP, or it was removed under us)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClipsError(f"cannot create clips folder {self.root}: {exc}") from exc

    def audio(self, samples: np.ndarray, end: float) -> None:
        end_i = int(round(end * self.sr))
        first = end_i - samples.size
        if first > self._end:  # a gap in the stream (dropped audio): silence in the ring
            self.ring.write(np.zeros(min(first - self._end, self.ring.capacity), np.float32))
        self.ring.write(samples)
        self._end = end_i
        self._flush(final=False)
        if end - self._last_retention >= RETENTION_EVERY_S:
            self._last_retention = end
            self._retention(None)

    def event(self, ev: Event) -> None:
        if ev.kind != "end" or ev.end is None:
            return
        if not self._space_ok():
            return
        first = max(0, int(round((max(ev.start, ev.end - MAX_CLIP_SECONDS) - self.pre) * self.sr)))
        stop = int(round((ev.end + self.post) * self.sr))
        start_utc = ev.start_utc if ev.start_utc is not None else time.time() - (self._end / self.sr - ev.start)
        t = dt.datetime.fromtimestamp(start_utc, dt.timezone.utc)
        folder = self.root / t.strftime("%Y-%m-%d")
        stem = t.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z_" + _slug(ev.label.display_name, ev.label.index)
        path = folder / f"{stem}.flac"
        k = 1
        while path.exists() or any(p.path == path for p in self.pending):
            path = folder / f"{stem}-{k}.flac"
            k += 1
        ev.clip = str(path.resolve())
        self.pending.append(_Pending(first, stop, path))
        self._flush(final=False)

    def _space_ok(self) -> bool:
        try:
            free = shutil.disk_usage(self.root).free
        except OSError:
            free = 0
        if free < self.min_free:
            self.skipped_low_space += 1
            if not self._low_space:
                log.warning("clips: only %.0f MB free in %s (floor %.0f MB): not writing clips "
                            "until space is back (said once)", free / 1e6, self.root, self.min_free / 1e6)
            self._low_space = True
            return False
        if self._low_space:
            log.warning("clips: %.0f MB free again in %s: writing clips again", free / 1e6, self.root)
            self._low_space = False
        return True

    def _flush(self, final: bool) -> None:
        ready = [p for p in self.pending if final or p.stop <= self._end]
        for p in ready:
            self.pending.remove(p)
            self._write(p)

    def _write(self, p: _Pending) -> None:
        oldest = self._end - self.ring.filled
        first = max(p.first, oldest)
        stop = min(p.stop, self._end)
        if stop <= first:
            log.warning("clips: no audio left for %s (skipped)", p.path.name)
            return
        audio = self.ring.latest(self._end - first)[:stop - first]
        p.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.path.with_name(p.path.name + ".part")
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), self.sr, format="FLAC", subtype="PCM_16")
        os.replace(tmp, p.path)
        self.written += 1
        log.debug("clip %s (%.2f s)", p.path, (stop - first) / self.sr)
        self._retention(p.path)

    def _retention(self, keep: Path | None) -> None:
        if self.max_bytes is None and self.max_days is None:
            return
        self.deleted += len(apply_retention(self.root, max_bytes=self.max_bytes,
                                            max_days=self.max_days, keep=keep))

    def close(self) -> dict[str, Any]:
        self._flush(final=True)
        out: dict[str, Any] = {"clips_written": self.written, "clips_deleted": self.deleted}
        if self.skipped_low_space:
            out["clips_skipped_low_space"] = self.skipped_low_space
        return out
