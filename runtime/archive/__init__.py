"""Archive tagging (``dymn-tag --output``, ``--workers``, ``--scheduler``): the ``[cluster]`` room.

Many files, resumable part files, one process or a Dask cluster. The runtime core never
imports this package; only the CLI does, when an archive option is given. One module per
purpose: :mod:`.options` (what decides the rows), :mod:`.inputs` (files, folders, manifests,
tasks), :mod:`.resume` (run identity, manifest, parts, claiming an output), :mod:`.tasks`
(tagging one task), :mod:`.encode` (part files and the merged output), :mod:`.cluster`
(Dask), :mod:`.run` (:func:`run_archive`, the job).

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

from dymn_edge.datasets import AUDIO_SUFFIXES
from dymn_edge.runtime.archive.cluster import check_scheduler_address
from dymn_edge.runtime.archive.encode import count_error_rows
from dymn_edge.runtime.archive.inputs import expand_inputs, input_keys, plan_tasks
from dymn_edge.runtime.archive.options import PIP_CLUSTER, ArchiveOptions, Task, output_format
from dymn_edge.runtime.archive.resume import RUN_MANIFEST, RunIdentity
from dymn_edge.runtime.archive.run import ArchiveSummary, run_archive

__all__ = ["AUDIO_SUFFIXES", "PIP_CLUSTER", "RUN_MANIFEST", "ArchiveOptions", "ArchiveSummary", "RunIdentity",
           "Task", "check_scheduler_address", "count_error_rows", "expand_inputs", "input_keys", "output_format",
           "plan_tasks", "run_archive"]
