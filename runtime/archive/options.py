"""Archive options and tasks: what decides a run's rows, and its units of work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.tagger import DEFAULT_DITHER

__all__ = ["ArchiveOptions", "OUTPUT_SUFFIXES", "PIP_CLUSTER", "Task", "output_format"]

PIP_CLUSTER = "pip install 'dymn-edge[cluster]'"


OUTPUT_SUFFIXES = (".parquet", ".jsonl")


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
