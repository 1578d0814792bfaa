"""Tagging one task, in the client process or on a Dask worker."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.archive.encode import concat_payloads, encode, error_row
from dymn_edge.runtime.archive.options import ArchiveOptions, Task
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.output import TagFilter
from dymn_edge.runtime.tagger import Tagger

log = logging.getLogger(__name__)

__all__ = ["TagContext", "TaskResult", "collect", "crash_result", "dask_task", "run_task"]

@dataclass
class TaskResult:
    """What a task sends back: the encoded part file and its counts."""

    index: int
    payload: bytes
    n_files: int
    n_failed: int
    audio_seconds: float
    errors: list[tuple[str, str]] = field(default_factory=list)


class TagContext:
    """A loaded engine, tagger and tag filter: built once per process / worker thread."""

    def __init__(self, model_path: Path, opts: ArchiveOptions) -> None:
        self.opts = opts
        engine = load_engine(model_path, threads=opts.threads, delegate=opts.delegate, engine=opts.engine)
        self.tagger = Tagger(engine, dither=opts.dither)
        self.filter = TagFilter.build(self.tagger.labels, top_k=opts.top_k, threshold=opts.threshold,
                                      include=opts.include, exclude=opts.exclude)
        if opts.windowed:  # a bad window is one user error up front, not an error row per file
            self.tagger.windows(0, self.tagger.window_seconds if opts.window is None else opts.window,
                                opts.hop or self.tagger.window_seconds)

    def tag(self, path: str) -> list[Any]:
        """Window scores of one file through the Tagger's public API."""
        o = self.opts
        return self.tagger.tag_file(path, o.window, o.hop, windowed=o.windowed)


def rows_of(ctx: TagContext, path: str, results: list[Any]) -> list[dict[str, Any]]:
    labels = ctx.tagger.labels
    rows = []
    for r in results:
        sel = ctx.filter.select(r.probabilities, getattr(r, "logits", None))  # saturated ties by logit
        row: dict[str, Any] = {"file": path, "start": float(r.start), "end": float(r.end),
                               "labels": [labels[i].display_name for i, _ in sel],
                               "indices": [i for i, _ in sel],
                               "probabilities": np.asarray([r.probabilities[i] for i, _ in sel], np.float32),
                               "error": None}
        if ctx.opts.scores:
            row["scores"] = np.asarray(r.probabilities, np.float32)
        if ctx.opts.embeddings:
            emb = getattr(r, "embedding", None)
            if emb is None:
                raise DymnEdgeError("a whole-clip score averaged over several model windows has no "
                                    "single embedding; add --window to store one per window")
            row["embedding"] = np.asarray(emb, np.float32).ravel()
        rows.append(row)
    return rows


def run_task(ctx: TagContext, task: Task) -> TaskResult:
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    seconds = 0.0
    for path in task.files:
        try:
            results = ctx.tag(path)
            file_rows = rows_of(ctx, path, results)
        except Exception as exc:  # (one bad file is one error row, never a dead job)
            msg = str(exc) if isinstance(exc, DymnEdgeError) else f"{type(exc).__name__}: {exc}"
            msg = " ".join(msg.split()) or type(exc).__name__
            log.debug("%s: %s", path, msg)
            errors.append((path, msg))
            rows.append(error_row(path, msg, ctx.opts))
            continue
        rows.extend(file_rows)
        seconds += max((float(r.end) for r in results), default=0.0)
    return TaskResult(task.index, encode(rows, ctx.opts, ctx.tagger.labels), len(task.files),
                      len(errors), seconds, errors)


# Per worker thread: (model digest, options) -> loaded context. A Dask worker process keeps
# it across tasks, so each thread loads the engine once.
_local = threading.local()


def worker_context(model_bytes: bytes, model_name: str, digest: str, opts: ArchiveOptions) -> TagContext:
    cache = getattr(_local, "contexts", None)
    if cache is None:
        cache = _local.contexts = {}
    key = (digest, opts)
    if key not in cache:
        try:
            from distributed import get_worker  # noqa: PLC0415

            base = Path(get_worker().local_directory)
        except (ImportError, ValueError):
            base = Path(tempfile.gettempdir())
        path = base / f"dymn-model-{digest[:16]}{Path(model_name).suffix}"
        if not path.is_file() or path.stat().st_size != len(model_bytes):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(model_bytes)
            os.replace(tmp, path)
        log.info("worker %d: loading %s", os.getpid(), model_name)
        _undo_dask_malloc_trim()
        cache[key] = TagContext(path, opts)
    return cache[key]


def _undo_dask_malloc_trim() -> None:
    """Give back glibc's large-buffer reuse on workers started with Dask's nanny defaults.

    ``MALLOC_TRIM_THRESHOLD_=65536`` (set by every Dask nanny) freezes the mmap threshold at
    128 kB, so each ~0.8 MB log-mel buffer is a fresh mmap with page faults: twice the CPU
    per file (see :func:`_local_cluster`). Raising both thresholds keeps such buffers on the
    heap; a worker then holds at most a few tens of MB more.
    """
    if sys.platform != "linux" or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 64 << 20)
        log.debug("worker %d: malloc thresholds raised (%s)", os.getpid(), bool(ok))
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def dask_task(model_bytes: bytes, model_name: str, digest: str, opts: ArchiveOptions,
              task: Task) -> TaskResult:
    """The function a Dask worker runs: ``model_bytes`` arrives once per worker (scattered)."""
    return run_task(worker_context(model_bytes, model_name, digest, opts), task)


def crash_result(task: Task, message: str, opts: ArchiveOptions) -> TaskResult:
    rows = [error_row(f, message, opts) for f in task.files]
    return TaskResult(task.index, encode(rows, opts, ()), len(task.files), len(task.files), 0.0,
                      [(f, message) for f in task.files])


def collect(task: Task, res: TaskResult, splits: dict[int, list[TaskResult | None]],
             accept: Callable[[Task, TaskResult], None], opts: ArchiveOptions) -> None:
    """Accept a whole task, or gather the one-file pieces of a split one."""
    if "#" not in task.part:
        accept(task, res)
        return
    part, k = task.part.rsplit("#", 1)
    pieces = splits[task.index]
    pieces[int(k)] = res
    if all(p is not None for p in pieces):
        del splits[task.index]
        whole = [p for p in pieces if p is not None]
        payload = concat_payloads([p.payload for p in whole], opts)
        merged = TaskResult(task.index, payload, sum(p.n_files for p in whole),
                            sum(p.n_failed for p in whole), sum(p.audio_seconds for p in whole),
                            [e for p in whole for e in p.errors])
        accept(Task(task.index, part, ()), merged)
