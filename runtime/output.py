"""What the tools print: tag selection, a readable table, JSON Lines.

Kept apart from the CLIs so that the JSON layout is one definition: ``dymn-tag --json``
writes one object per window ``{"start", "end", "tags": [{"label", "index", "mid",
"probability"}]}`` (plus ``"file"``, and ``"untrained": true`` for structural models),
``dymn-listen --json`` writes the same window objects with ``"type": "hop"``, events with
``"type": "event"`` and a final ``"type": "summary"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError, LabelsError
from dymn_edge.labels import Label, resolve_label

__all__ = ["TagFilter", "tags_json", "window_json", "format_table", "TableWriter",
           "UNTRAINED_WARNING", "json_line"]

UNTRAINED_WARNING = ("WARNING: this model file holds an UNTRAINED (random-init) network; "
                     "its tags are meaningless")


@dataclass
class TagFilter:
    """Top-k, score threshold and allow/deny lists, as label indices."""

    top_k: int | None = 5
    threshold: float = 0.0
    include: frozenset[int] | None = None
    exclude: frozenset[int] = frozenset()

    @classmethod
    def build(cls, labels: Sequence[Label], *, top_k: int | None = 5, threshold: float = 0.0,
              include: Iterable[str] = (), exclude: Iterable[str] = ()) -> "TagFilter":
        """Resolve names/mids (LabelsError with a suggestion for unknown ones)."""
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise DymnEdgeError(f"--threshold is a probability between 0 and 1, got {threshold:g}")
        if top_k is not None and top_k < 1:
            raise DymnEdgeError(f"--top-k must be >= 1, got {top_k}")
        inc = _resolve_all(labels, include)
        exc = _resolve_all(labels, exclude)
        if both := sorted(set(inc) & set(exc)):
            names = ", ".join(labels[i].display_name for i in both)
            raise DymnEdgeError(f"--include and --exclude both name {names}: pick one")
        return cls(top_k, float(threshold), frozenset(inc) if inc else None, frozenset(exc))

    def select(self, probabilities: np.ndarray,
               logits: np.ndarray | None = None) -> list[tuple[int, float]]:
        """(index, probability) pairs, best first.

        Probabilities saturate (sigmoid of 20 and of 1600 are both 1.0 in float32), so equal
        probabilities are ordered by ``logits`` (the activation is monotone in them) when
        given; without it a saturated tie would list the lowest class index first.
        """
        p = np.asarray(probabilities, dtype=np.float64)
        if logits is not None:
            z = np.asarray(logits, dtype=np.float64).reshape(-1)
            if z.shape != p.shape:
                raise ValueError(f"logits {z.shape} and probabilities {p.shape} differ")
            order = np.lexsort((-z, -p))  # primary: probability; ties: logit
        else:
            order = np.argsort(-p, kind="stable")
        out: list[tuple[int, float]] = []
        for i in order:
            i = int(i)
            if self.include is not None and i not in self.include:
                continue
            if i in self.exclude or p[i] < self.threshold:
                continue
            out.append((i, float(p[i])))
            if self.top_k is not None and len(out) >= self.top_k:
                break
        return out


def _resolve_all(labels: Sequence[Label], names: Iterable[str]) -> list[int]:
    """Indices for repeated options; a value that is not one label is read as a
    comma-separated list (AudioSet names hold commas: "Male speech, man speaking")."""
    out: list[int] = []
    for item in names:
        item = item.strip()
        if not item:  # an empty --include would silently mean "every label"
            raise LabelsError("--include / --exclude got an empty label name")
        try:
            out.append(resolve_label(labels, item).index)
        except LabelsError:
            parts = [p.strip() for p in item.split(",") if p.strip()]
            if len(parts) < 2:
                raise
            out.extend(resolve_label(labels, p).index for p in parts)
    return out


def tags_json(labels: Sequence[Label], selected: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [{"label": labels[i].display_name, "index": i, "mid": labels[i].mid,
             "probability": round(p, 6)} for i, p in selected]


def window_json(start: float, end: float, labels: Sequence[Label],
                selected: list[tuple[int, float]], **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = dict(extra)
    obj.update({"start": round(start, 6), "end": round(end, 6),
                "tags": tags_json(labels, selected)})
    return obj


def json_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


class TableWriter:
    """The table of :func:`format_table`, written a window at a time (output appears as it goes).

    The label column is as wide as the model's longest label name (capped), since the rows
    to come are not known yet.
    """

    def __init__(self, labels: Sequence[Label], out: Any, *, title: str | None = None) -> None:
        self.labels, self.out = labels, out
        self.width = min(max([len(lb.display_name) for lb in labels] + [5]), 40)
        if title:
            out.write(title + "\n")
        out.write(f"  {'start':>8} {'end':>8}  {'label':<{self.width}}  prob\n")

    def write(self, start: float, end: float, selected: list[tuple[int, float]]) -> None:
        if not selected:
            self.out.write(f"  {start:8.2f} {end:8.2f}  {'(no tag above threshold)':<{self.width}}\n")
        for k, (i, p) in enumerate(selected):
            t = f"{start:8.2f} {end:8.2f}" if k == 0 else " " * 17
            self.out.write(f"  {t}  {self.labels[i].display_name:<{self.width}}  {p:.3f}\n")
        self.out.flush()


def format_table(rows: list[tuple[float, float, list[tuple[int, float]]]],
                 labels: Sequence[Label], *, title: str | None = None) -> str:
    """A readable table: one block per window, one line per tag."""
    lines = [title] if title else []
    width = max([len(labels[i].display_name) for _, _, sel in rows for i, _ in sel] + [5])
    lines.append(f"  {'start':>8} {'end':>8}  {'label':<{width}}  prob")
    for start, end, sel in rows:
        if not sel:
            lines.append(f"  {start:8.2f} {end:8.2f}  {'(no tag above threshold)':<{width}}")
        for k, (i, p) in enumerate(sel):
            t = f"{start:8.2f} {end:8.2f}" if k == 0 else " " * 17
            lines.append(f"  {t}  {labels[i].display_name:<{width}}  {p:.3f}")
    return "\n".join(lines)
