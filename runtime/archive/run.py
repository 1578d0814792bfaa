"""Tag an archive: many files, resumable part files, one process or a Dask cluster.

Why this shape:

- **Inputs** are files, folders (recursive, audio suffixes only) or manifests (``.txt`` /
  ``.lst``: one path a line; ``.csv`` / ``.tsv``: a ``path`` / ``file`` / ``filename``
  column, else the first one). Relative manifest paths are read relative to the manifest.
  A path listed twice is tagged once (with a warning): every file is in the output once.
- **Tasks** are consecutive groups of ``task_size`` files in input order. Each task's result
  is one *part file* in ``OUTPUT.parts/``, named by the task's position and a digest of what
  its rows are made of: its files' paths, sizes and mtimes (ns), the model file's sha256 and
  every option that changes rows (window, hop, selection, columns). A part is written to a
  temporary name and renamed, so a part either exists whole or not at all. Part files are
  written by the *client* (workers return the encoded bytes), so a killed worker can never
  leave half a part, and workers need no access to the output folder, only to the audio.
- **Resume** (a part is reused only when it provably covers the same inputs): ``OUTPUT.parts/
  run.json`` (written atomically before any work) records the run's identity (model sha256,
  options digest, inputs digest) and its parts. A re-run with the same model and options
  reuses the parts whose names match and redoes the others (new or changed files); parts or
  an ``OUTPUT`` of another model or options are refused with one line unless ``overwrite``.
  ``OUTPUT`` is always re-merged from this run's parts (never judged by mtimes), so it holds
  exactly the rows of this run's inputs; then ``.parts/`` is removed. A run that failed or
  was interrupted keeps it (and says so). A finished Parquet file carries the identity in
  its schema metadata: a re-run of the identical job does nothing; one with other inputs
  re-tags them into a new ``OUTPUT``. An existing ``OUTPUT`` without that record (JSON
  Lines, another tool's file, another model or options) is refused unless ``overwrite``.
  The client stats the files: one it cannot see (audio only on the workers) is keyed as
  missing, so a change to it is not noticed (use ``overwrite``).
- **Errors**: a file that cannot be read or scored becomes one error row (file, message); a
  task that kills its worker process repeatedly (a decoder crash) is split into one-file
  tasks, and a file that still kills its worker becomes an error row. The job never stops
  for one file.
- **Dask**: the model file's bytes are scattered once to every worker (``broadcast``); each
  worker thread loads the engine once and caches it (LiteRT / ONNX Runtime sessions are not
  shared between threads). At most a few tasks per worker thread are in flight, so memory on
  the client stays flat for millions of files. A ``scheduler`` address is checked
  (``tcp://``, ``tls://``, ``inproc://``, ``ucx://`` or ``HOST:PORT``) and contacted before
  anything is decided, even when every part is done: a wrong address never passes silently.
- **Output**: the parts are concatenated in task order into ``OUTPUT`` (Parquet via pyarrow,
  or JSON Lines as ``dymn-tag --json`` writes them), atomically. Parquet columns: ``file``,
  ``start``, ``end`` (s), ``labels``, ``indices``, ``probabilities`` (top-k, float32, exact),
  optional ``scores`` (all classes) and ``embedding``, ``error`` (null on good rows).
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import hashlib
import io
import itertools
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.cliutil import check_output_file
from dymn_edge.datasets import AUDIO_SUFFIXES, find_audio
from dymn_edge.errors import DymnEdgeError, one_line
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.output import TagFilter, json_line, window_json
from dymn_edge.runtime.tagger import DEFAULT_DITHER, Tagger

log = logging.getLogger(__name__)

__all__ = ["AUDIO_SUFFIXES", "ArchiveOptions", "ArchiveSummary", "RunIdentity", "Task",
           "check_scheduler_address", "expand_inputs", "input_keys", "plan_tasks", "run_archive",
           "PIP_CLUSTER", "RUN_MANIFEST"]

PIP_CLUSTER = "pip install 'dymn-edge[cluster]'"

MANIFEST_SUFFIXES = frozenset({".txt", ".lst", ".csv", ".tsv"})
OUTPUT_SUFFIXES = (".parquet", ".jsonl")
_PATH_COLUMNS = ("path", "file", "filename", "filepath", "file_path", "audio", "audio_path")
#: Tasks in flight per worker thread: enough to keep workers busy, few enough to bound memory.
_INFLIGHT_PER_THREAD = 3
#: Unreadable files logged one by one before the rest go to the debug log only.
_ERRORS_SHOWN = 20
#: Re-runs of a task whose result or input was lost with a worker (not a failure of its files).
_LOST_RETRIES = 3
#: The run manifest in ``OUTPUT.parts/``: the identity of the run its parts belong to.
RUN_MANIFEST = "run.json"
_MANIFEST_KIND = "dymn-edge archive run"
#: Schema metadata key of a finished Parquet output: the identity of the run that wrote it.
_STAMP_KEY = b"dymn_edge_run"
#: Address schemes of a Dask scheduler (``distributed.comm`` backends).
SCHEDULER_SCHEMES = ("tcp", "tls", "inproc", "ucx")
#: Seconds to wait for a TCP connection to a scheduler before Dask's own (longer) handshake.
_PROBE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------
# inputs and tasks


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


@dataclass(frozen=True)
class Task:
    """One unit of work: consecutive files, and the part file that will hold their rows."""

    index: int
    part: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveOptions:
    """Everything that decides the rows of a file (and so the part names)."""

    window: float | None = None
    hop: float | None = None
    windowed: bool = False
    top_k: int | None = 5
    threshold: float = 0.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    scores: bool = False
    embeddings: bool = False
    dither: float = DEFAULT_DITHER
    fmt: str = "parquet"
    #: not part of the rows (results are identical per thread count on the same engine)
    threads: int | None = field(default=None, compare=False)
    delegate: str | None = None
    #: the engine table's name or "auto"; like threads not part of the rows' digest (the
    #: engines of one format agree within fp32 rounding)
    engine: str = field(default="auto", compare=False)

    def options_digest(self) -> str:
        """sha256 of the options that change rows (not the thread count, nor the engine)."""
        d = asdict(self)
        d.pop("threads")
        d.pop("engine")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def fingerprint(self, model_digest: str) -> str:
        """What every part name of a run with this model starts from."""
        return hashlib.sha256(f"{self.options_digest()}\0{model_digest}".encode()).hexdigest()


def output_format(output: Path) -> str:
    """``parquet`` or ``jsonl`` from the output suffix (a user error otherwise)."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise DymnEdgeError(f"--output must end in .parquet or .jsonl, got '{output.name}'")
    return suffix[1:]


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


# ---------------------------------------------------------------------------------------
# tagging one task (runs in the client process or on a Dask worker)


@dataclass
class TaskResult:
    """What a task sends back: the encoded part file and its counts."""

    index: int
    payload: bytes
    n_files: int
    n_failed: int
    audio_seconds: float
    errors: list[tuple[str, str]] = field(default_factory=list)


class _TagContext:
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


def _rows_of(ctx: _TagContext, path: str, results: list[Any]) -> list[dict[str, Any]]:
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


def _error_row(path: str, message: str, opts: ArchiveOptions) -> dict[str, Any]:
    row: dict[str, Any] = {"file": path, "start": None, "end": None, "labels": [], "indices": [],
                           "probabilities": np.zeros(0, np.float32), "error": message}
    if opts.scores:
        row["scores"] = None
    if opts.embeddings:
        row["embedding"] = None
    return row


def _schema(opts: ArchiveOptions) -> Any:
    import pyarrow as pa  # noqa: PLC0415  (optional: the cluster extra)

    fields = [pa.field("file", pa.string(), nullable=False), pa.field("start", pa.float64()),
              pa.field("end", pa.float64()), pa.field("labels", pa.list_(pa.string())),
              pa.field("indices", pa.list_(pa.int32())), pa.field("probabilities", pa.list_(pa.float32()))]
    if opts.scores:
        fields.append(pa.field("scores", pa.list_(pa.float32())))
    if opts.embeddings:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def _encode(rows: list[dict[str, Any]], opts: ArchiveOptions, labels: Sequence[Any]) -> bytes:
    """Rows -> the bytes of one part file (Parquet table or JSON Lines)."""
    if opts.fmt == "jsonl":
        lines = []
        for r in rows:
            if r["error"] is not None:
                obj: dict[str, Any] = {"file": r["file"], "error": r["error"]}
            else:
                sel = list(zip(r["indices"], (float(p) for p in r["probabilities"])))
                obj = window_json(r["start"], r["end"], labels, sel, file=r["file"])
                if opts.scores:
                    obj["scores"] = [float(x) for x in r["scores"]]
                if opts.embeddings:
                    obj["embedding"] = [float(x) for x in r["embedding"]]
            lines.append(json_line(obj) + "\n")
        return "".join(lines).encode("utf-8")
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    schema = _schema(opts)
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(cols, schema=schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _run_task(ctx: _TagContext, task: Task) -> TaskResult:
    rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    seconds = 0.0
    for path in task.files:
        try:
            results = ctx.tag(path)
            file_rows = _rows_of(ctx, path, results)
        except Exception as exc:  # noqa: BLE001  (one bad file is one error row, never a dead job)
            msg = str(exc) if isinstance(exc, DymnEdgeError) else f"{type(exc).__name__}: {exc}"
            msg = " ".join(msg.split()) or type(exc).__name__
            log.debug("%s: %s", path, msg)
            errors.append((path, msg))
            rows.append(_error_row(path, msg, ctx.opts))
            continue
        rows.extend(file_rows)
        seconds += max((float(r.end) for r in results), default=0.0)
    return TaskResult(task.index, _encode(rows, ctx.opts, ctx.tagger.labels), len(task.files),
                      len(errors), seconds, errors)


# Per worker thread: (model digest, options) -> loaded context. A Dask worker process keeps
# it across tasks, so each thread loads the engine once.
_local = threading.local()


def _worker_context(model_bytes: bytes, model_name: str, digest: str, opts: ArchiveOptions) -> _TagContext:
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
        cache[key] = _TagContext(path, opts)
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
    return _run_task(_worker_context(model_bytes, model_name, digest, opts), task)


# ---------------------------------------------------------------------------------------
# the job


@dataclass
class ArchiveSummary:
    """Counts and rates of one run (``skipped``: files whose parts existed already)."""

    output: Path
    files: int
    done: int
    failed: int
    skipped: int
    error_rows: int
    audio_seconds: float
    wall_seconds: float
    workers: int

    @property
    def files_per_second(self) -> float:
        return (self.done + self.failed) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def audio_hours_per_hour(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.files} files: {self.done} done, {self.failed} failed, {self.skipped} skipped "
                f"in {self.wall_seconds:.1f} s ({self.files_per_second:.1f} files/s); "
                f"{self.audio_seconds / 3600:.3f} h of audio = {self.audio_hours_per_hour:.1f} audio hours "
                f"per wall-clock hour -> {self.output}")


def _write_atomic(path: Path, data: bytes | Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _remove_orphan_tmp(folder: Path) -> None:
    """Delete half-written parts of runs that died (``.NAME.PID.tmp`` whose PID is gone)."""
    for tmp in folder.glob(".*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            log.debug("removed %s (its run died)", tmp)
        except (ValueError, PermissionError):  # not our name, or another user's live process
            continue


def _merge(parts: list[Path], output: Path, opts: ArchiveOptions, ident: RunIdentity) -> None:
    """Concatenate part files in task order into ``output`` (atomically).

    A Parquet output carries ``ident`` in its schema metadata, so a re-run of the identical
    job can prove that the file already holds its rows.
    """
    if opts.fmt == "jsonl":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for p in parts:
                    out.write(p.read_bytes())
    else:
        import pyarrow.parquet as pq  # noqa: PLC0415

        schema = _schema(opts).with_metadata({_STAMP_KEY: json.dumps(ident.record()).encode()})

        def write(tmp: Path) -> None:
            with pq.ParquetWriter(tmp, schema) as writer:
                for p in parts:
                    writer.write_table(pq.read_table(p).replace_schema_metadata(schema.metadata))
    _write_atomic(output, write)


# ---------------------------------------------------------------------------------------
# run identity: which parts and outputs belong to this run


@dataclass(frozen=True)
class RunIdentity:
    """What decides a run's rows: the model file, the options and the input files."""

    model_sha256: str
    options_sha256: str
    inputs_sha256: str
    files: int

    @classmethod
    def of(cls, model_digest: str, opts: ArchiveOptions, keys: Sequence[bytes]) -> RunIdentity:
        h = hashlib.sha256()
        for k in keys:
            h.update(k + b"\0\0")
        return cls(model_digest, opts.options_digest(), h.hexdigest(), len(keys))

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def other_job(self, rec: dict[str, Any]) -> str | None:
        """What differs from ``rec`` other than the inputs ("model" / "options"), or None."""
        if rec.get("model_sha256") != self.model_sha256:
            return "model"
        if rec.get("options_sha256") != self.options_sha256:
            return "options"
        return None

    def same_inputs(self, rec: dict[str, Any]) -> bool:
        return rec.get("inputs_sha256") == self.inputs_sha256 and rec.get("files") == self.files


def _read_record(path: Path) -> dict[str, Any] | None:
    """The run manifest in ``path``, or None when it is not one (unreadable, foreign, corrupt)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == _MANIFEST_KIND else None


def _output_stamp(output: Path) -> dict[str, Any] | None:
    """The run identity a finished Parquet output of this module carries, else None."""
    if output.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        meta = pq.read_schema(output).metadata or {}
        rec = json.loads(meta[_STAMP_KEY])
    except Exception:  # noqa: BLE001  (not Parquet, truncated, no or a foreign stamp)
        return None
    return rec if isinstance(rec, dict) else None


def _is_ours(name: str) -> bool:
    return name == RUN_MANIFEST or name.startswith("part-") or (name.startswith(".") and name.endswith(".tmp"))


def _remove_parts(parts_dir: Path) -> bool:
    """Delete a run's manifest, parts and temporaries, then the folder; False when other files
    (not this module's) keep the folder."""
    if not parts_dir.is_dir():
        return True
    for p in parts_dir.iterdir():
        if _is_ours(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    try:
        parts_dir.rmdir()
    except OSError:
        return False
    return True


_OTHER = {"model": "another model file", "options": "other options (window, hop, tag selection or columns)"}


def _claim(output: Path, parts_dir: Path, ident: RunIdentity, overwrite: bool) -> bool:
    """Decide whether this run may use ``output`` and ``parts_dir``; one line when it may not.

    Returns True when ``output`` already holds exactly this run's rows (nothing to do).
    """
    again = "; --overwrite starts over"
    if overwrite:
        if not _remove_parts(parts_dir):
            raise DymnEdgeError(f"{parts_dir} holds files that are not dymn-tag's; move them away")
        return False
    manifest = parts_dir / RUN_MANIFEST
    if manifest.is_file():
        rec = _read_record(manifest)
        if rec is None:
            raise DymnEdgeError(f"{manifest} is not a run manifest of this dymn-edge{again}")
        other = ident.other_job(rec)
        if other:
            raise DymnEdgeError(f"{parts_dir} holds an unfinished run with {_OTHER[other]} "
                                f"(the same command as then finishes it){again}")
        return False
    if parts_dir.exists():
        if not parts_dir.is_dir():
            raise DymnEdgeError(f"{parts_dir} exists and is not a folder (the output's parts go there)")
        if any(_is_ours(p.name) and not p.name.startswith(".") for p in parts_dir.iterdir()):
            raise DymnEdgeError(f"{parts_dir} holds parts without a run manifest (an older "
                                f"dymn-edge or an unknown run){again}")
    if output.exists():
        rec = _output_stamp(output)
        if rec is None:
            why = ("JSON Lines carry no run record" if output.suffix.lower() == ".jsonl"
                   else "it was not written by dymn-tag --output")
            raise DymnEdgeError(f"{output} exists and may belong to another run ({why}); "
                                "--overwrite replaces it")
        other = ident.other_job(rec)
        if other:
            raise DymnEdgeError(f"{output} holds the rows of a run with {_OTHER[other]}; "
                                "--overwrite replaces it")
        if ident.same_inputs(rec):
            return True
        log.warning("%s holds the rows of other inputs (%s files): they are replaced by this "
                    "run's %d files", output, rec.get("files", "?"), ident.files)
    return False


def _write_manifest(parts_dir: Path, output: Path, ident: RunIdentity, opts: ArchiveOptions,
                    tasks: Sequence[Task], task_size: int) -> None:
    d = asdict(opts)
    d.pop("threads")
    rec = {"kind": _MANIFEST_KIND, "version": 1, "output": output.name, **ident.record(),
           "options": d, "task_size": task_size, "parts": [t.part for t in tasks]}
    _write_atomic(parts_dir / RUN_MANIFEST, (json.dumps(rec, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------------------
# the Dask scheduler address


def check_scheduler_address(address: str) -> tuple[str, str | None, int | None]:
    """``(scheme, host, port)`` of a scheduler address, or one line saying what is wrong.

    ``tcp://`` / ``tls://`` addresses and a bare ``HOST:PORT`` (tcp) need a port;
    ``inproc://`` and ``ucx://`` are passed to Dask as they are (host and port None).
    """
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "tcp", address.strip()
    scheme = scheme.lower()
    if scheme not in SCHEDULER_SCHEMES:
        raise DymnEdgeError(f"--scheduler {address}: unknown scheme '{scheme}://' (use "
                            + ", ".join(f"{s}://" for s in SCHEDULER_SCHEMES) + " or HOST:PORT)")
    if scheme not in ("tcp", "tls"):
        if not rest:
            raise DymnEdgeError(f"--scheduler {address}: no address after {scheme}://")
        return scheme, None, None
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")  # [::1]:8786
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DymnEdgeError(f"--scheduler {address}: expected {scheme}://HOST:PORT (e.g. tcp://head:8786)")
    return scheme, host, int(port)


def _probe_scheduler(address: str) -> None:
    """A quick TCP connect: a refused or unroutable address is one line in seconds, not
    after Dask's 30 s of connection retries."""
    scheme, host, port = check_scheduler_address(address)
    if host is None or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise DymnEdgeError(f"cannot connect to the Dask scheduler {address}: "
                            f"{exc.strerror or one_line(exc, with_type=True)}") from None


def count_error_rows(output: Path) -> int:
    """Error rows in a merged output file."""
    if output.suffix.lower() == ".jsonl":
        n = 0
        with open(output, encoding="utf-8") as fh:
            for line in fh:
                if '"error"' in line and "error" in json.loads(line):
                    n += 1
        return n
    import pyarrow.parquet as pq  # noqa: PLC0415

    col = pq.read_table(output, columns=["error"]).column("error")
    return len(col) - col.null_count


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="file", desc="dymn-tag", disable=not enabled or total == 0,
                mininterval=1.0, smoothing=0.1, dynamic_ncols=True)


def _need_pyarrow(fmt: str) -> None:
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401, PLC0415
        except ImportError as exc:
            raise DymnEdgeError(f"Parquet output needs pyarrow: {PIP_CLUSTER} (or use --output X.jsonl)") from exc


def run_archive(model: str | Path, inputs: Sequence[str | os.PathLike], output: str | Path, *,
                opts: ArchiveOptions, task_size: int = 50, workers: int | None = None,
                scheduler: str | None = None, progress: bool = True,
                client: Any = None, overwrite: bool = False) -> ArchiveSummary:
    """Tag every input file into ``output``; see the module docstring.

    ``workers`` starts a ``distributed.LocalCluster`` with that many one-thread worker
    processes, ``scheduler`` connects to a running cluster, ``client`` uses a connected
    ``distributed.Client`` (tests); none of them: the plain loop in this process.
    ``overwrite`` discards the parts and output of another run instead of refusing.
    Every option, the output folder and the scheduler are checked before any file is tagged.
    """
    t0 = time.perf_counter()
    output = Path(output)
    if opts.fmt != output_format(output):
        raise DymnEdgeError(f"options say {opts.fmt} but the output is {output.name}")
    check_output_file(output, "--output", OUTPUT_SUFFIXES)
    _need_pyarrow(opts.fmt)
    model = Path(model)
    if not model.is_file():
        raise DymnEdgeError(f"model file not found: {model}")
    if workers is not None and workers < 1:
        raise DymnEdgeError(f"--workers must be >= 1, got {workers}")
    if scheduler:
        _probe_scheduler(scheduler)  # a wrong address before anything is read or written
    files = expand_inputs(inputs)
    if not files:
        raise DymnEdgeError("no audio files in the inputs")
    try:
        model_bytes = model.read_bytes()
    except OSError as exc:
        raise DymnEdgeError(f"cannot read the model file {model}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(model_bytes).hexdigest()
    keys = input_keys(files)
    tasks = plan_tasks(files, task_size, opts.fingerprint(digest), opts.fmt, keys)
    ident = RunIdentity.of(digest, opts, keys)
    parts_dir = output.with_name(output.name + ".parts")
    finished = _claim(output, parts_dir, ident, overwrite)
    if finished:
        todo: list[Task] = []
    else:
        try:
            parts_dir.mkdir(exist_ok=True)
            _remove_orphan_tmp(parts_dir)
            _write_manifest(parts_dir, output, ident, opts, tasks, task_size)
        except OSError as exc:
            raise DymnEdgeError(f"cannot write in {parts_dir}: {exc.strerror or exc}") from None
        todo = [t for t in tasks if not (parts_dir / t.part).is_file()]
    skipped = sum(len(t.files) for t in tasks) - sum(len(t.files) for t in todo)
    if finished:
        log.info("%s already holds the rows of these %d files (same model, options and inputs)",
                 output, len(files))
    elif skipped:
        log.info("%d of %d files already tagged in %s (same model, options and file contents)",
                 skipped, len(files), parts_dir)

    counts = {"done": 0, "failed": 0, "seconds": 0.0}
    use_dask = bool(workers or scheduler or client is not None)
    n_workers = 1
    try:
        if todo and use_dask:
            _check_model_loads(model, opts)  # one line in the client, before a cluster starts
        # a --scheduler is contacted even with nothing to do: a wrong address is never a success
        with _cluster(workers if todo else None, scheduler, client) as dclient:
            bar = _progress(sum(len(t.files) for t in todo), progress)

            def accept(task: Task, res: TaskResult) -> None:
                _write_atomic(parts_dir / task.part, res.payload)
                counts["done"] += res.n_files - res.n_failed
                counts["failed"] += res.n_failed
                counts["seconds"] += res.audio_seconds
                for path, msg in res.errors:  # the first ones on stderr; all of them are error rows
                    shown = counts["failed"] - res.n_failed < _ERRORS_SHOWN
                    log.log(logging.WARNING if shown else logging.DEBUG, "%s: %s", path, msg)
                bar.update(res.n_files)
                if counts["failed"]:
                    bar.set_postfix(failed=counts["failed"], refresh=False)

            try:
                if todo and dclient is not None:
                    n_workers = _run_dask(todo, accept, model, model_bytes, digest, opts, dclient)
                elif todo:
                    ctx = _TagContext(model, opts)
                    for task in todo:
                        accept(task, _run_task(ctx, task))
            finally:
                bar.close()
        if not finished:
            _merge([parts_dir / t.part for t in tasks], output, opts, ident)
    except BaseException:
        have = sum((parts_dir / t.part).is_file() for t in tasks)
        if not have:  # stopped before any part (the cluster, the model): nothing worth keeping
            _remove_parts(parts_dir)
        else:
            log.warning("the run stopped: %d of %d parts are kept in %s; the same command resumes "
                        "from them", have, len(tasks), parts_dir)
        raise
    if not finished and not _remove_parts(parts_dir):
        log.warning("%s is kept: it holds files that are not dymn-tag's", parts_dir)
    return ArchiveSummary(output, len(files), counts["done"], counts["failed"], skipped,
                          count_error_rows(output), counts["seconds"], time.perf_counter() - t0, n_workers)


def _check_model_loads(model: Path, opts: ArchiveOptions) -> None:
    """Fail in the client, with one line, on a model the workers could not load either."""
    _TagContext(model, opts)


@contextlib.contextmanager
def _cluster(workers: int | None, scheduler: str | None, client: Any) -> Iterator[Any]:
    """The run's Dask client (None: the plain loop), closed afterwards if this run made it.

    ``client``: the caller's, used as it is. ``scheduler``: probed, then connected to.
    ``workers``: a local cluster (the caller passes None when there is no work).
    """
    if client is not None:
        yield client
        return
    if not scheduler and not workers:
        yield None
        return
    try:
        from distributed import Client, LocalCluster  # noqa: PLC0415
    except ImportError as exc:
        raise DymnEdgeError(f"--workers / --scheduler need Dask: {PIP_CLUSTER}") from exc
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # distributed logs every cluster start and stop at INFO on its own handler
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    t_start = time.perf_counter()
    if scheduler:
        try:
            own = Client(scheduler, timeout="30s")
        except Exception as exc:  # noqa: BLE001  (OSError, TimeoutError, a comm's ValueError)
            raise DymnEdgeError(f"cannot connect to the Dask scheduler {scheduler}: "
                                f"{one_line(exc, with_type=True)}") from None
    else:
        cluster = _local_cluster(workers or 1, LocalCluster)
        own = Client(cluster)
    try:
        log.info("Dask: %s, ready after %.1f s", own.scheduler.address, time.perf_counter() - t_start)
        yield own
    finally:
        own.close()
        if cluster is not None:
            cluster.close()


def _run_dask(todo: list[Task], accept: Callable[[Task, TaskResult], None], model: Path,
              model_bytes: bytes, digest: str, opts: ArchiveOptions, client: Any) -> int:
    """Run ``todo`` on a Dask cluster; returns the number of worker threads used."""
    from distributed import as_completed  # noqa: PLC0415

    # One-thread engines on workers unless asked: parallelism comes from the workers.
    wopts = opts if opts.threads else ArchiveOptions(**{**asdict(opts), "threads": 1})
    threads = max(1, sum(client.nthreads().values()))
    log.info("Dask: %d worker threads", threads)
    model_ref = [client.scatter(model_bytes, broadcast=True, hash=True)]
    pending: Iterator[Task] = iter(todo)
    by_key: dict[str, tuple[Task, int]] = {}
    lost: dict[str, int] = {}
    seq = itertools.count()
    ac = as_completed(loop=client.loop)  # not the default client's loop (tests run two)

    def submit(task: Task, attempt: int = 0) -> None:
        if model_ref[0].status != "finished":  # every worker holding it died
            log.warning("the model file was lost with its workers; shipping it again")
            model_ref[0] = client.scatter(model_bytes, broadcast=True, hash=True)
        fut = client.submit(dask_task, model_ref[0], model.name, digest, wopts, task,
                            key=f"dymn-tag-{task.part}-{attempt}-{next(seq)}", pure=False)
        by_key[fut.key] = (task, attempt)
        ac.add(fut)

    for task in _take(pending, threads * _INFLIGHT_PER_THREAD):
        submit(task)
    splits: dict[int, list[TaskResult | None]] = {}
    for fut in ac:
        task, attempt = by_key.pop(fut.key)
        res, exc = _outcome(fut)
        fut.release()
        if res is not None:
            _collect(task, res, splits, accept, opts)
        elif isinstance(exc, DymnEdgeError):  # e.g. a worker without the engine: every task would fail
            raise DymnEdgeError(f"on a Dask worker: {exc}") from exc
        elif not _is_task_failure(exc) and lost.get(task.part, 0) < _LOST_RETRIES:
            # the result or an input went with a dead worker, or the future was cancelled:
            # nothing is known against the files, so the same task runs again
            lost[task.part] = lost.get(task.part, 0) + 1
            log.warning("task %s lost (%s); running it again", task.part, one_line(exc, with_type=True))
            submit(task, attempt)
        elif len(task.files) > 1 and attempt == 0:
            log.warning("task of %d files failed on its workers (%s); retrying file by file",
                        len(task.files), one_line(exc, with_type=True))
            splits[task.index] = [None] * len(task.files)
            for k, f in enumerate(task.files):
                submit(Task(task.index, f"{task.part}#{k}", (f,)), attempt=1)
        else:
            res = _crash_result(task, f"worker died or failed on this file: {one_line(exc, with_type=True)}", opts)
            _collect(task, res, splits, accept, opts)
        for nxt in _take(pending, 1):
            submit(nxt)
    return threads


def _outcome(fut: Any) -> tuple[TaskResult | None, BaseException | None]:
    """(result, None) or (None, why): a finished future's result can still be lost with its
    worker before it is fetched, and a cancelled future raises instead of returning."""
    try:
        if fut.status == "finished":
            return fut.result(), None
        return None, fut.exception()
    except DymnEdgeError as exc:
        return None, exc
    except Exception as exc:  # noqa: BLE001  (CancelledError, lost data, a closed comm)
        return None, exc


def _is_task_failure(exc: BaseException | None) -> bool:
    """True when the task itself failed (raised, or killed its workers), not its transport."""
    if exc is None:
        return False
    from distributed.scheduler import KilledWorker  # noqa: PLC0415

    if isinstance(exc, KilledWorker):
        return True
    cancelled = type(exc).__name__ in ("CancelledError", "FutureCancelledError")
    return not cancelled and not isinstance(exc, (OSError, TimeoutError))


def _local_cluster(workers: int, local_cluster: Any) -> Any:
    """One-thread worker processes, without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    That setting (a default of the nanny) turns off glibc's adaptive mmap threshold, so every
    log-mel frame buffer (~0.8 MB) is a fresh mmap + page faults: measured here, it doubles
    the CPU time per file of the NumPy frontend (1.61 s vs 0.78 s per 100 FSDD files).
    BLAS stays at one thread (the nanny's OPENBLAS/OMP/MKL_NUM_THREADS=1).
    """
    import dask  # noqa: PLC0415

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):  # read once per nanny
        return local_cluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None)


def _take(it: Iterator[Task], n: int) -> list[Task]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _crash_result(task: Task, message: str, opts: ArchiveOptions) -> TaskResult:
    rows = [_error_row(f, message, opts) for f in task.files]
    return TaskResult(task.index, _encode(rows, opts, ()), len(task.files), len(task.files), 0.0,
                      [(f, message) for f in task.files])


def _collect(task: Task, res: TaskResult, splits: dict[int, list[TaskResult | None]],
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
        payload = _concat_payloads([p.payload for p in whole], opts)
        merged = TaskResult(task.index, payload, sum(p.n_files for p in whole),
                            sum(p.n_failed for p in whole), sum(p.audio_seconds for p in whole),
                            [e for p in whole for e in p.errors])
        accept(Task(task.index, part, ()), merged)


def _concat_payloads(payloads: list[bytes], opts: ArchiveOptions) -> bytes:
    if opts.fmt == "jsonl":
        return b"".join(payloads)
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    table = pa.concat_tables([pq.read_table(pa.BufferReader(p)) for p in payloads])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
