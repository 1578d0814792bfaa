"""Operator counts of an exported file (total and per op type), read from the file itself.

Why: latency on CPU engines follows the op count as much as the MACs (every RESHAPE /
TRANSPOSE / SLICE is a kernel launch and often a copy), so the benchmark reports how many
ops each shipped file really has. TFLite is read with the flatbuffer schema that ships with
``ai-edge-litert`` (no interpreter, no delegate), ONNX with ``onnx.load`` (top-level graph).
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _tflite_op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415

    return {v: k for k, v in vars(schema.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)}


def _tflite_ops(path: Path) -> Counter:
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415
    except ImportError as exc:
        raise DymnEdgeError(f"counting TFLite ops needs ai-edge-litert ({exc})") from None
    try:
        model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    except Exception as exc:  # a truncated or foreign file: flatbuffers raises anything
        raise DymnEdgeError(f"{path}: not a readable TFLite flatbuffer ({exc})") from None
    names = _tflite_op_names()
    codes = []
    for oc in model.operatorCodes or []:
        # builtinCode holds codes > 127; old files only set deprecatedBuiltinCode (max() is
        # the schema's documented rule for reading both)
        code = max(oc.builtinCode or 0, oc.deprecatedBuiltinCode or 0)
        name = names.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM" and oc.customCode:
            cc = oc.customCode
            name = f"CUSTOM:{cc.decode() if isinstance(cc, bytes) else cc}"
        codes.append(name)
    counts: Counter = Counter()
    for sg in model.subgraphs or []:
        for op in sg.operators or []:
            counts[codes[op.opcodeIndex]] += 1
    return counts


def _onnx_ops(path: Path) -> Counter:
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:
        raise DymnEdgeError(f"counting ONNX ops needs onnx ({exc})") from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf DecodeError and friends
        raise DymnEdgeError(f"{path}: not a readable ONNX model ({exc})") from None
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in graph.node)


def count_ops(path: str | Path) -> dict[str, Any]:
    """``{"total": n, "by_type": {op: count, ...}}`` (most frequent first) of a model file."""
    p = Path(path)
    if not p.is_file():
        raise DymnEdgeError(f"model file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".tflite":
        counts = _tflite_ops(p)
    elif suffix == ".onnx":
        counts = _onnx_ops(p)
    else:
        raise DymnEdgeError(f"{p}: op counting knows .onnx and .tflite, not '{suffix or 'no suffix'}'")
    return {"total": sum(counts.values()), "by_type": dict(counts.most_common())}
