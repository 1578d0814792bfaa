"""Resume: a run's identity, its manifest and parts, and which output it may claim."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.archive.options import ArchiveOptions, Task

log = logging.getLogger(__name__)

__all__ = ["RUN_MANIFEST", "STAMP_KEY", "RunIdentity", "claim", "remove_orphan_tmp", "remove_parts",
           "write_atomic", "write_manifest"]

#: The run manifest in ``OUTPUT.parts/``: the identity of the run its parts belong to.
RUN_MANIFEST = "run.json"


MANIFEST_KIND = "dymn-edge archive run"


#: Schema metadata key of a finished Parquet output: the identity of the run that wrote it.
STAMP_KEY = b"dymn_edge_run"


def write_atomic(path: Path, data: bytes | Callable[[Path], None]) -> None:
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


def remove_orphan_tmp(folder: Path) -> None:
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


def read_record(path: Path) -> dict[str, Any] | None:
    """The run manifest in ``path``, or None when it is not one (unreadable, foreign, corrupt)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("kind") == MANIFEST_KIND else None


def output_stamp(output: Path) -> dict[str, Any] | None:
    """The run identity a finished Parquet output of this module carries, else None."""
    if output.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        meta = pq.read_schema(output).metadata or {}
        rec = json.loads(meta[STAMP_KEY])
    except Exception:  # (not Parquet, truncated, no or a foreign stamp)
        return None
    return rec if isinstance(rec, dict) else None


def _is_ours(name: str) -> bool:
    return name == RUN_MANIFEST or name.startswith("part-") or (name.startswith(".") and name.endswith(".tmp"))


def remove_parts(parts_dir: Path) -> bool:
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


def claim(output: Path, parts_dir: Path, ident: RunIdentity, overwrite: bool) -> bool:
    """Decide whether this run may use ``output`` and ``parts_dir``; one line when it may not.

    Returns True when ``output`` already holds exactly this run's rows (nothing to do).
    """
    again = "; --overwrite starts over"
    if overwrite:
        if not remove_parts(parts_dir):
            raise DymnEdgeError(f"{parts_dir} holds files that are not dymn-tag's; move them away")
        return False
    manifest = parts_dir / RUN_MANIFEST
    if manifest.is_file():
        rec = read_record(manifest)
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
        rec = output_stamp(output)
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


def write_manifest(parts_dir: Path, output: Path, ident: RunIdentity, opts: ArchiveOptions,
                    tasks: Sequence[Task], task_size: int) -> None:
    d = asdict(opts)
    d.pop("threads")
    rec = {"kind": MANIFEST_KIND, "version": 1, "output": output.name, **ident.record(),
           "options": d, "task_size": task_size, "parts": [t.part for t in tasks]}
    write_atomic(parts_dir / RUN_MANIFEST, (json.dumps(rec, indent=1) + "\n").encode())
