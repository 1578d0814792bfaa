"""Class labels: the 527 AudioSet classes shipped with the package, user CSVs, fallbacks.

A model's output unit i means the label with index i; the runtime reads the label set from
the model metadata. The AudioSet list (index, mid, display_name) comes from the public
AudioSet ontology by Google, CC BY-SA 4.0 (see ``data/LABELS_LICENSE.md``). Fine-tuned
models bring their own ``index,display_name[,mid]`` CSV, validated strictly here because a
shifted or missing row would silently mislabel every prediction.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dymn_edge.errors import LabelsError

log = logging.getLogger(__name__)

__all__ = ["Label", "audioset_labels", "read_labels_csv", "generic_labels", "resolve_label",
           "AUDIOSET_CSV"]

#: Resource name of the bundled AudioSet label list inside ``dymn_edge/data``.
AUDIOSET_CSV = "class_labels_indices.csv"


@dataclass(frozen=True)
class Label:
    """One output class: its unit index, AudioSet machine id (if any) and display name."""

    index: int
    mid: str | None
    display_name: str

    def __str__(self) -> str:
        return self.display_name


def _parse(text: str, source: str) -> list[Label]:
    """Parse and validate label CSV text; ``source`` names the file in error messages."""
    reader = csv.reader(io.StringIO(text))
    i_idx, i_name, i_mid, width = _parse_header(reader, source)
    labels: list[Label] = []
    seen: dict[int, int] = {}
    names: dict[tuple[str, str], int] = {}  # (column, name) -> line
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank lines (e.g. a trailing newline) carry nothing
            if len(row) != width:
                raise LabelsError(f"labels file {source}, line {line}: expected {width} "
                                  f"fields, got {len(row)}")
            raw = row[i_idx].strip()
            try:
                index = int(raw)
            except ValueError:
                raise LabelsError(f"labels file {source}, line {line}: index '{raw}' is not "
                                  "an integer") from None
            if index in seen:
                raise LabelsError(f"labels file {source}, line {line}: index {index} repeats "
                                  f"line {seen[index]}")
            seen[index] = line
            name = row[i_name].strip()
            if not name:
                raise LabelsError(f"labels file {source}, line {line}: empty display_name "
                                  f"for index {index}")
            mid = (row[i_mid].strip() or None) if i_mid is not None else None
            # --include / --exclude / thresholds look labels up by name (case-insensitive) or
            # mid: a repeated one would silently resolve to its first row
            for what, value in (("display_name", name), ("mid", mid)):
                if value is None:
                    continue
                key = (what, value.casefold())
                if key in names:
                    raise LabelsError(f"labels file {source}, line {line}: {what} '{value}' repeats "
                                      f"line {names[key]} (each class needs its own)")
                names[key] = line
            labels.append(Label(index, mid, name))
    except csv.Error as exc:
        raise LabelsError(f"labels file {source}, line {reader.line_num}: {exc}") from None
    return _checked_order(labels, seen, source)


def _parse_header(reader, source: str) -> tuple[int, int, int | None, int]:
    """(index column, display_name column, mid column or None, column count) of the header."""
    try:
        header = next(reader)
    except StopIteration:
        raise LabelsError(f"labels file {source} is empty") from None
    except csv.Error as exc:
        raise LabelsError(f"labels file {source}: unreadable CSV header: {exc}") from None
    cols = [h.strip().lstrip("\ufeff").lower() for h in header]
    missing = [c for c in ("index", "display_name") if c not in cols]
    if missing:
        raise LabelsError(
            f"labels file {source}: header must name columns index,display_name (and "
            f"optionally mid); got {','.join(header) or '(empty)'}"
        )
    if len(set(cols)) != len(cols):
        raise LabelsError(f"labels file {source}: duplicate column in header {','.join(header)}")
    i_mid = cols.index("mid") if "mid" in cols else None
    return cols.index("index"), cols.index("display_name"), i_mid, len(cols)


def _checked_order(labels: list[Label], seen: dict[int, int], source: str) -> list[Label]:
    """Labels sorted by index, which must run 0..N-1 without gaps (one per output unit)."""
    if not labels:
        raise LabelsError(f"labels file {source} has a header but no rows")
    labels.sort(key=lambda lab: lab.index)
    for expected, lab in enumerate(labels):
        if lab.index != expected:
            raise LabelsError(
                f"labels file {source}, line {seen[lab.index]}: indices must run "
                f"0..{len(labels) - 1} without gaps; index {expected} is missing "
                f"(found {lab.index})"
            )
    return labels


@functools.lru_cache(maxsize=1)
def _audioset() -> tuple[Label, ...]:
    text = resources.files("dymn_edge").joinpath("data").joinpath(AUDIOSET_CSV).read_text("utf-8")
    labels = _parse(text, f"dymn_edge/data/{AUDIOSET_CSV}")
    if len(labels) != 527:
        raise LabelsError(f"bundled AudioSet labels hold {len(labels)} classes, expected 527")
    return tuple(labels)


def audioset_labels() -> list[Label]:
    """The 527 AudioSet classes in model output order (read once, then cached)."""
    return list(_audioset())


def read_labels_csv(path: str | os.PathLike) -> list[Label]:
    """Read a user labels CSV with header ``index,display_name`` and optionally ``mid``.

    Rows may come in any order; indices must be exactly 0..n-1, each once, with a non-empty
    name. Problems raise LabelsError naming the file and the line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelsError(f"labels file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read labels file {p}: {' '.join(str(exc).split())}") from None
    labels = _parse(text, str(p))
    log.debug("read %d labels from %s", len(labels), p)
    return labels


def generic_labels(n: int) -> list[Label]:
    """Placeholder names ``class_0 .. class_{n-1}`` for models without a label set."""
    if n < 0:
        raise ValueError(f"number of classes must be >= 0, got {n}")
    return [Label(i, None, f"class_{i}") for i in range(n)]


def resolve_label(labels: Sequence[Label], name_or_mid: str) -> Label:
    """Find a label by display name (case-insensitive) or mid; unknown names get a hint."""
    key = name_or_mid.strip()
    low = key.casefold()
    for lab in labels:
        if lab.mid is not None and lab.mid == key:
            return lab
    for lab in labels:
        if lab.display_name.casefold() == low:
            return lab
    names = {lab.display_name.casefold(): lab.display_name for lab in labels}
    close = difflib.get_close_matches(low, list(names), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(names[c]) for c in close)}?" if close else ""
    raise LabelsError(f"unknown label '{name_or_mid}' (not a display name or mid of the "
                      f"{len(labels)} labels).{hint}")
