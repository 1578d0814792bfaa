"""Operator counts of an exported file (total and per op type), read from the file itself.

Why: latency on CPU engines follows the op count as much as the MACs (every RESHAPE /
TRANSPOSE / SLICE is a kernel launch and often a copy), so the benchmark reports how many
ops each shipped file really has. Each format's reader is the ``op_counter`` column of the
formats table (TFLite: the flatbuffer schema of ``ai-edge-litert``, no interpreter; ONNX:
``onnx.load``, top-level graph).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError
from dymn_edge.formats import FORMATS

log = logging.getLogger(__name__)


def count_ops(path: str | Path) -> dict[str, Any]:
    """``{"total": n, "by_type": {op: count, ...}}`` (most frequent first) of a model file."""
    p = Path(path)
    if not p.is_file():
        raise DymnEdgeError(f"model file not found: {p}")
    suffix = p.suffix.lower()
    spec = next((s for s in FORMATS.values() if s.suffix == suffix), None)
    if spec is None:
        known = " and ".join(s.suffix for s in FORMATS.values())
        raise DymnEdgeError(f"{p}: op counting knows {known}, not '{suffix or 'no suffix'}'")
    counts = spec.call("op_counter", p)
    return {"total": sum(counts.values()), "by_type": dict(counts.most_common())}
