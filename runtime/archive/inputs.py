"""Inputs: files, folders and manifests -> audio paths; their keys and the tasks."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from dymn_edge.datasets import AUDIO_SUFFIXES, find_audio
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.archive.options import Task

log = logging.getLogger(__name__)

__all__ = ["MANIFEST_SUFFIXES", "expand_inputs", "input_keys", "plan_tasks"]

MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".tsv"})


_PATH_COLUMNS = ("path", "file", "filename", "filepath", "file_path", "audio", "audio_path")


def _read_manifest(path: Path) -> list[Path]:
    """Paths listed in a text (one a line, ``#`` comments) or CSV/TSV manifest."""
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DymnEdgeError(f"cannot read manifest {path}: {exc}") from exc
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
        rows = [r for r in rows if r and any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
        if col is None:  # no known header: a first row that names an audio file is data
            col, body = 0, rows if Path(rows[0][0].strip()).suffix.lower() in AUDIO_SUFFIXES else rows[1:]
        else:
            body = rows[1:]
        entries = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [p if p.is_absolute() else base / p for p in map(Path, entries)]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (recursive, :data:`AUDIO_SUFFIXES`) and manifests -> audio paths.

    A named path that does not exist is a user error (a typo should not become an empty
    job); a path *listed in a manifest* that does not exist becomes an error row later, as
    archives do lose files. Order: inputs in the given order, folders sorted.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = find_audio(p)  # the suffixes --calibration DIR walks too
            if not found:
                log.warning("no audio files (%s) under %s", ", ".join(sorted(AUDIO_SUFFIXES)), p)
            out.extend(found)
        elif p.suffix.lower() in MANIFEST_SUFFIXES:
            if not p.is_file():
                raise DymnEdgeError(f"manifest not found: {p}")
            out.extend(_read_manifest(p))
        elif p.exists():
            out.append(p)
        else:
            raise DymnEdgeError(f"input not found: {p} (give audio files, folders or a .txt/.csv manifest)")
    seen: set[str] = set()
    unique: list[Path] = []
    for p in out:
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if len(unique) < len(out):
        log.warning("%d paths were listed more than once; each is tagged once", len(out) - len(unique))
    return unique


def input_keys(files: Sequence[Path]) -> list[bytes]:
    """Each file as path, size and mtime (ns): a part is reused only for unchanged files.

    A file the client cannot stat (gone, or only on the workers' file system) is keyed as
    missing: its rows (an error row, or the workers' reading) are redone only when that changes.
    """
    keys = []
    for f in files:
        path = str(f).encode("utf-8", "surrogateescape")
        try:
            st = os.stat(f)
            keys.append(b"%s\0%d\0%d" % (path, st.st_size, st.st_mtime_ns))
        except OSError:
            keys.append(path + b"\0missing")
    return keys


def plan_tasks(files: Sequence[Path], task_size: int, fingerprint: str, fmt: str,
               keys: Sequence[bytes] | None = None) -> list[Task]:
    """Group files into tasks whose part names change whenever their rows would.

    ``keys``: :func:`input_keys` of ``files`` (computed when not given).
    """
    if task_size < 1:
        raise DymnEdgeError(f"--task-size must be >= 1, got {task_size}")
    keys = input_keys(files) if keys is None else keys
    tasks = []
    for i, a in enumerate(range(0, len(files), task_size)):
        group = tuple(str(f) for f in files[a:a + task_size])
        h = hashlib.sha256(fingerprint.encode())
        for k in keys[a:a + task_size]:
            h.update(k + b"\0\0")
        tasks.append(Task(i, f"part-{i:07d}-{h.hexdigest()[:16]}.{fmt}", group))
    return tasks
