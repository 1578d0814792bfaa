"""The archive job: :func:`run_archive` checks, plans, runs and merges."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dymn_edge.cliutil import check_output_file
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.archive.cluster import cluster, probe_scheduler, run_dask
from dymn_edge.runtime.archive.encode import count_error_rows, merge, need_pyarrow
from dymn_edge.runtime.archive.inputs import expand_inputs, input_keys, plan_tasks
from dymn_edge.runtime.archive.options import OUTPUT_SUFFIXES, ArchiveOptions, Task, output_format
from dymn_edge.runtime.archive.resume import (
    RunIdentity, claim, remove_orphan_tmp, remove_parts, write_atomic, write_manifest,
)
from dymn_edge.runtime.archive.tasks import TagContext, TaskResult, run_task

log = logging.getLogger(__name__)

__all__ = ["ArchiveSummary", "run_archive"]

#: Unreadable files logged one by one before the rest go to the debug log only.
_ERRORS_SHOWN = 20


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


def _progress(total: int, enabled: bool) -> Any:
    return tqdm(total=total, unit="file", desc="dymn-tag", disable=not enabled or total == 0,
                mininterval=1.0, smoothing=0.1, dynamic_ncols=True)


def _check_model_loads(model: Path, opts: ArchiveOptions) -> None:
    """Fail in the client, with one line, on a model the workers could not load either."""
    TagContext(model, opts)


@dataclass
class _Job:
    """A planned run: its model, tasks and parts folder, and what is left to do."""

    model: Path
    model_bytes: bytes
    digest: str
    opts: ArchiveOptions
    output: Path
    parts_dir: Path
    files: list[Path]
    tasks: list[Task]
    todo: list[Task]
    ident: RunIdentity
    finished: bool  # the output already holds exactly this run's rows

    @property
    def skipped(self) -> int:
        return sum(len(t.files) for t in self.tasks) - sum(len(t.files) for t in self.todo)


def run_archive(model: str | Path, inputs: Sequence[str | os.PathLike], output: str | Path, *,
                opts: ArchiveOptions, task_size: int = 50, workers: int | None = None,
                scheduler: str | None = None, progress: bool = True,
                client: Any = None, overwrite: bool = False) -> ArchiveSummary:
    """Tag every input file into ``output``; see the package docstring.

    ``workers`` starts a ``distributed.LocalCluster`` with that many one-thread worker
    processes, ``scheduler`` connects to a running cluster, ``client`` uses a connected
    ``distributed.Client`` (tests); none of them: the plain loop in this process.
    ``overwrite`` discards the parts and output of another run instead of refusing.
    Every option, the output folder and the scheduler are checked before any file is tagged.
    """
    t0 = time.perf_counter()
    output, model = Path(output), Path(model)
    _check_arguments(model, output, opts, workers, scheduler)
    files = expand_inputs(inputs)
    if not files:
        raise DymnEdgeError("no audio files in the inputs")
    job = _plan(model, files, output, opts, task_size, overwrite)
    counts = {"done": 0, "failed": 0, "seconds": 0.0}
    try:
        n_workers = _execute(job, counts, workers, scheduler, client, progress)
        if not job.finished:
            merge([job.parts_dir / t.part for t in job.tasks], output, opts, job.ident)
    except BaseException:
        have = sum((job.parts_dir / t.part).is_file() for t in job.tasks)
        if not have:  # stopped before any part (the cluster, the model): nothing worth keeping
            remove_parts(job.parts_dir)
        else:
            log.warning("the run stopped: %d of %d parts are kept in %s; the same command resumes "
                        "from them", have, len(job.tasks), job.parts_dir)
        raise
    if not job.finished and not remove_parts(job.parts_dir):
        log.warning("%s is kept: it holds files that are not dymn-tag's", job.parts_dir)
    return ArchiveSummary(output, len(files), counts["done"], counts["failed"], job.skipped,
                          count_error_rows(output), counts["seconds"], time.perf_counter() - t0, n_workers)


def _check_arguments(model: Path, output: Path, opts: ArchiveOptions, workers: int | None,
                     scheduler: str | None) -> None:
    """Everything that can be checked before an input is read or a file written."""
    if opts.fmt != output_format(output):
        raise DymnEdgeError(f"options say {opts.fmt} but the output is {output.name}")
    check_output_file(output, "--output", OUTPUT_SUFFIXES)
    need_pyarrow(opts.fmt)
    if not model.is_file():
        raise DymnEdgeError(f"model file not found: {model}")
    if workers is not None and workers < 1:
        raise DymnEdgeError(f"--workers must be >= 1, got {workers}")
    if scheduler:
        probe_scheduler(scheduler)  # a wrong address before anything is read or written


def _plan(model: Path, files: list[Path], output: Path, opts: ArchiveOptions, task_size: int,
          overwrite: bool) -> _Job:
    """The run's tasks and identity; claims ``output`` and its parts folder (one line when
    another run holds them) and lists the tasks whose parts are missing."""
    try:
        model_bytes = model.read_bytes()
    except OSError as exc:
        raise DymnEdgeError(f"cannot read the model file {model}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(model_bytes).hexdigest()
    keys = input_keys(files)
    tasks = plan_tasks(files, task_size, opts.fingerprint(digest), opts.fmt, keys)
    ident = RunIdentity.of(digest, opts, keys)
    parts_dir = output.with_name(output.name + ".parts")
    finished = claim(output, parts_dir, ident, overwrite)
    todo: list[Task] = []
    if not finished:
        try:
            parts_dir.mkdir(exist_ok=True)
            remove_orphan_tmp(parts_dir)
            write_manifest(parts_dir, output, ident, opts, tasks, task_size)
        except OSError as exc:
            raise DymnEdgeError(f"cannot write in {parts_dir}: {exc.strerror or exc}") from None
        todo = [t for t in tasks if not (parts_dir / t.part).is_file()]
    job = _Job(model, model_bytes, digest, opts, output, parts_dir, files, tasks, todo, ident, finished)
    if finished:
        log.info("%s already holds the rows of these %d files (same model, options and inputs)",
                 output, len(files))
    elif job.skipped:
        log.info("%d of %d files already tagged in %s (same model, options and file contents)",
                 job.skipped, len(files), parts_dir)
    return job


def _execute(job: _Job, counts: dict[str, Any], workers: int | None, scheduler: str | None,
             client: Any, progress: bool) -> int:
    """Tag the missing parts, locally or on Dask; returns the number of worker threads."""
    n_workers = 1
    if job.todo and (workers or scheduler or client is not None):
        _check_model_loads(job.model, job.opts)  # one line in the client, before a cluster starts
    # a --scheduler is contacted even with nothing to do: a wrong address is never a success
    with cluster(workers if job.todo else None, scheduler, client) as dclient:
        bar = _progress(sum(len(t.files) for t in job.todo), progress)
        accept = _acceptor(job, counts, bar)
        try:
            if job.todo and dclient is not None:
                n_workers = run_dask(job.todo, accept, job.model, job.model_bytes, job.digest, job.opts, dclient)
            elif job.todo:
                ctx = TagContext(job.model, job.opts)
                for task in job.todo:
                    accept(task, run_task(ctx, task))
        finally:
            bar.close()
    return n_workers


def _acceptor(job: _Job, counts: dict[str, Any], bar: Any) -> Callable[[Task, TaskResult], None]:
    """What is done with each finished task: its part written, counted, its errors logged."""

    def accept(task: Task, res: TaskResult) -> None:
        write_atomic(job.parts_dir / task.part, res.payload)
        counts["done"] += res.n_files - res.n_failed
        counts["failed"] += res.n_failed
        counts["seconds"] += res.audio_seconds
        for path, msg in res.errors:  # the first ones on stderr; all of them are error rows
            shown = counts["failed"] - res.n_failed < _ERRORS_SHOWN
            log.log(logging.WARNING if shown else logging.DEBUG, "%s: %s", path, msg)
        bar.update(res.n_files)
        if counts["failed"]:
            bar.set_postfix(failed=counts["failed"], refresh=False)

    return accept
