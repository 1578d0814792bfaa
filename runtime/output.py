"""What the tools print: tag selection, a readable table, JSON Lines.

Kept apart from the CLIs so that the JSON layout is one definition: ``dymn-tag --json``
writes one object per window ``{"start", "end", "tags": [{"label", "index", "mid",
"probability"}]}`` (plus ``"file"``, and ``"untrained": true`` for structural models),
``dymn-listen --json`` writes the same window objects with ``"type": "hop"``, events with
``"type": "event"`` and a final ``"type": "summary"``.

dymn-listen's two outputs, :class:`TerminalSink` (lines and a live status line) and
:class:`JsonLinesSink`, are :class:`~dymn_edge.runtime.sinks.EventSink` s in the same list
as the database, clips and MQTT: ``--include`` / ``--exclude`` filter the events of every
sink in one place (:meth:`TagFilter.keeps`, applied by the sink set).
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
from dymn_edge.runtime.events import Event
from dymn_edge.runtime.sinks import EventSink

__all__ = ["TagFilter", "tags_json", "window_json", "TableWriter", "UNTRAINED_WARNING", "json_line",
           "event_json", "TerminalSink", "JsonLinesSink"]

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

    def keeps(self, index: int) -> bool:
        """Whether events of label ``index`` are shown / stored (``--include`` / ``--exclude``)."""
        return (self.include is None or index in self.include) and index not in self.exclude

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
    """dymn-tag's table: one block per window, one line per tag, written as it goes.

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


def event_json(ev: Event) -> dict[str, Any]:
    """One ``dymn-listen --json`` event line."""
    lab = ev.label
    obj = {"type": "event", "event": ev.kind, "label": lab.display_name, "index": lab.index,
           "mid": lab.mid, "start": round(ev.start, 3), "probability": round(ev.probability, 6)}
    if ev.peak_raw is not None:  # "probability" is the smoothed peak; this the model's own
        obj["peak_raw_probability"] = round(ev.peak_raw, 6)
    if ev.end is not None:
        obj["end"] = round(ev.end, 3)
    return obj


class _ListenOutput(EventSink):
    """What both outputs share: inline (their lines interleave with the hop lines), and a
    failure (a closed pipe) ends the run instead of being counted."""

    inline = True
    contained = False

    def __init__(self, labels: Sequence[Label], filt: TagFilter, out: Any, *, every_hop: bool = False,
                 tracker: Any = None, untrained: bool = False) -> None:
        self.labels, self.filt, self.out = list(labels), filt, out
        self.every_hop = every_hop
        self.tracker = tracker  # its ``gated`` / ``level``: the last window's level floor
        self.untrained = untrained

    def _gated(self) -> bool:
        return bool(getattr(self.tracker, "gated", False))

    def _selection(self, scores: Any) -> list[tuple[int, float]]:
        return [] if self._gated() else self.filt.select(scores.probabilities, scores.logits)


class TerminalSink(_ListenOutput):
    """Human lines: events, ``--every-hop`` windows, the summary; on a terminal also a live
    status line that stays below the other lines."""

    name = "terminal"

    def __init__(self, labels: Sequence[Label], filt: TagFilter, out: Any, *, every_hop: bool = False,
                 tracker: Any = None, untrained: bool = False, tty: bool | None = None) -> None:
        super().__init__(labels, filt, out, every_hop=every_hop, tracker=tracker, untrained=untrained)
        self.tty = out.isatty() if tty is None else tty
        self._status = ""
        self._status_shown = False
        if untrained:
            self.line(UNTRAINED_WARNING)

    def line(self, text: str, keep_status: bool = True) -> None:
        """One line above the status line (which is drawn again below it)."""
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False
        self.out.write(text + "\n")
        if keep_status and self._status:
            self._draw_status()
        self.out.flush()

    def _draw_status(self) -> None:
        self.out.write("\r\033[K" + self._status)
        self._status_shown = True

    def hop(self, scores: Any, events: Sequence[Event], stats: Any) -> None:
        sel = self._selection(scores)
        if self.tty:
            top = ", ".join(f"{self.labels[i].display_name} {p:.2f}" for i, p in sel[:3])
            self._status = (f"{stats.audio_seconds:7.1f} s | {top} | RTF {stats.rtf:.3f} | skipped "
                            f"{stats.hops_skipped} | overflows {stats.overflows} | dropped "
                            f"{stats.dropped_seconds:.1f} s")
        if self.every_hop:
            tags = ", ".join(f"{self.labels[i].display_name} {p:.2f}" for i, p in sel)
            tags = tags or ("(below the level floor)" if self._gated() else "")
            self.line(f"[{scores.start:8.2f}-{scores.end:8.2f} s] {tags}")
        elif self.tty:
            self._draw_status()
            self.out.flush()

    def event(self, ev: Event) -> None:
        raw = "" if ev.peak_raw is None else f", raw peak {ev.peak_raw:.2f}"
        if ev.kind == "start":
            self.line(f"[{ev.start:8.2f} s] + {ev.label.display_name} ({ev.probability:.2f}{raw})")
        else:
            self.line(f"[{ev.end:8.2f} s] - {ev.label.display_name} "
                      f"({ev.start:.2f}-{ev.end:.2f} s, peak {ev.probability:.2f}{raw})")

    def summary(self, stats: Any) -> None:
        self._status = ""
        self.line(stats.summary(), keep_status=False)


class JsonLinesSink(_ListenOutput):
    """``--json``: one object per event (and per hop with ``--every-hop``), then the summary."""

    name = "json"

    def write(self, obj: dict[str, Any]) -> None:
        if self.untrained:
            obj["untrained"] = True
        self.out.write(json_line(obj) + "\n")
        self.out.flush()

    def hop(self, scores: Any, events: Sequence[Event], stats: Any) -> None:
        if not self.every_hop:
            return
        obj = window_json(scores.start, scores.end, self.labels, self._selection(scores), type="hop")
        level = getattr(self.tracker, "level", None)
        if level is not None:  # to choose --min-level-dbfs (digital silence: null)
            obj["level_dbfs"] = round(level, 1) if math.isfinite(level) else None
        if self._gated():
            obj["below_level_floor"] = True
        self.write(obj)

    def event(self, ev: Event) -> None:
        self.write(event_json(ev))

    def summary(self, stats: Any) -> None:
        obj: dict[str, Any] = {"type": "summary"}
        obj.update(stats.as_dict())
        self.write(obj)
