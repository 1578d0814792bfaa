"""Per-label event thresholds from a CSV or TOML file (``dymn-listen --thresholds FILE``).

One global onset threshold rarely fits 527 AudioSet classes (a dog bark scores high, a
distant siren low), so a device can set on / off / min-duration per label, by display name
or AudioSet mid, on top of the global ``--on / --off / --min-duration``. Formats:

CSV, a header with ``label`` and any of ``on``, ``off``, ``min_duration`` (empty cell =
global value)::

    label,on,off,min_duration
    Dog,0.4,0.25,0.5
    /m/03kmc9,0.2,,

TOML, one table per label::

    ["Dog"]
    on = 0.4
    off = 0.25
    min_duration = 0.5

A label the model does not have is one clear error (with a suggestion), never ignored.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dymn_edge.errors import DymnEdgeError, LabelsError
from dymn_edge.labels import Label, resolve_label
from dymn_edge.runtime.events import EventConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (Python 3.10)
    import tomli as tomllib

log = logging.getLogger(__name__)

__all__ = ["load_thresholds", "ThresholdsError", "FIELDS"]

FIELDS = ("on", "off", "min_duration")


class ThresholdsError(DymnEdgeError):
    """A thresholds file that cannot be read or names something the model does not have."""


def _rows_csv(path: Path) -> list[tuple[str, dict[str, Any], str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(line for line in f if line.strip() and not line.lstrip().startswith("#"))
        header = [h.strip() for h in reader.fieldnames or []]
        if "label" not in header:
            raise ThresholdsError(f"{path}: CSV needs a header with 'label' and any of "
                                  f"{', '.join(FIELDS)} (got {', '.join(header) or 'nothing'})")
        unknown = [h for h in header if h not in ("label", *FIELDS)]
        if unknown:
            raise ThresholdsError(f"{path}: unknown column(s) {', '.join(unknown)}; "
                                  f"allowed: label, {', '.join(FIELDS)}")
        rows = []
        for k, raw in enumerate(reader, start=2):
            row = {(key or "").strip(): (v or "").strip() for key, v in raw.items() if key is not None}
            vals = {f: row[f] for f in FIELDS if row.get(f, "") != ""}
            rows.append((row.get("label", ""), vals, f"{path}:{k}"))
        return rows


def _rows_toml(path: Path) -> list[tuple[str, dict[str, Any], str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ThresholdsError(f"{path}: not valid TOML ({exc})") from exc
    rows = []
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ThresholdsError(f"{path}: '{name}' must be a table like [\"{name}\"] with "
                                  f"{', '.join(FIELDS)} keys")
        unknown = [k for k in table if k not in FIELDS]
        if unknown:
            raise ThresholdsError(f"{path}: [{name!r}] has unknown key(s) {', '.join(unknown)}; "
                                  f"allowed: {', '.join(FIELDS)}")
        rows.append((name, dict(table), f"{path} [{name!r}]"))
    return rows


def load_thresholds(path: str | Path, labels: Sequence[Label], config: EventConfig) -> np.ndarray:
    """(n_labels, 3) on / off / min_duration: the global ``config`` overridden per label.

    An ``off`` not given for a label is the global one, capped at that label's ``on``.
    """
    path = Path(path)
    if not path.is_file():
        raise ThresholdsError(f"thresholds file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        rows = _rows_toml(path)
    elif suffix in (".csv", ".txt"):
        rows = _rows_csv(path)
    else:
        raise ThresholdsError(f"{path}: thresholds file must be .csv or .toml")
    n = len(labels)
    out = np.array([[config.on, config.off, config.min_duration]] * n, dtype=np.float64).reshape(n, 3)
    seen: dict[int, str] = {}
    for name, vals, where in rows:
        if not str(name).strip():
            raise ThresholdsError(f"{where}: empty label")
        try:
            lab = resolve_label(labels, str(name))
        except LabelsError as exc:
            raise ThresholdsError(f"{where}: {exc}") from exc
        if lab.index in seen:
            raise ThresholdsError(f"{where}: label '{lab.display_name}' already set at {seen[lab.index]}")
        seen[lab.index] = where
        try:
            parsed = {k: float(v) for k, v in vals.items()}
        except (TypeError, ValueError) as exc:
            raise ThresholdsError(f"{where}: thresholds must be numbers ({exc})") from exc
        on = parsed.get("on", config.on)
        off = parsed.get("off", min(config.off, on))
        min_d = parsed.get("min_duration", config.min_duration)
        if not 0.0 < on <= 1.0:
            raise ThresholdsError(f"{where}: on must be in (0, 1], got {on:g}")
        if not 0.0 <= off <= on:
            raise ThresholdsError(f"{where}: off must be in [0, on={on:g}], got {off:g}")
        if min_d < 0:
            raise ThresholdsError(f"{where}: min_duration must be >= 0, got {min_d:g}")
        out[lab.index] = (on, off, min_d)
    log.info("per-label thresholds for %d label(s) from %s", len(seen), path)
    return out


def labels_in(path: str | Path, labels: Sequence[Label]) -> list[int]:
    """Indices of the labels a thresholds file names (the labels a device watches)."""
    path = Path(path)
    rows = _rows_toml(path) if path.suffix.lower() == ".toml" else _rows_csv(path)
    return [resolve_label(labels, str(name)).index for name, _, _ in rows]
