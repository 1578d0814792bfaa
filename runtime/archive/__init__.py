"""Archive tagging (``dymn-tag --output``, ``--workers``, ``--scheduler``): the ``[cluster]`` room.

Folders or manifests of audio files tagged into one Parquet / JSON Lines table, locally or on
a Dask cluster, resumable part by part. The runtime core never imports this package; only the
CLI does, when an archive option is given.
"""

from __future__ import annotations

from dymn_edge.runtime.archive.run import (
    AUDIO_SUFFIXES,
    RUN_MANIFEST,
    ArchiveOptions,
    ArchiveSummary,
    count_error_rows,
    expand_inputs,
    output_format,
    plan_tasks,
    run_archive,
)

__all__ = ["AUDIO_SUFFIXES", "RUN_MANIFEST", "ArchiveOptions", "ArchiveSummary", "count_error_rows",
           "expand_inputs", "output_format", "plan_tasks", "run_archive"]
