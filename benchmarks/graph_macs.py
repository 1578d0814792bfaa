"""MACs read off an exported ONNX graph: the cross-check of :mod:`dymn_edge.benchmarks.macs`.

Shapes are taken by running the graph once in ONNX Runtime on a zero input with every
intermediate tensor exposed as an output (the legacy exporter's Shape -> Gather -> Reshape
chains defeat ``onnx.shape_inference`` from the first block on); without onnxruntime,
``onnx.shape_inference`` with the input dims fixed is the fallback. Either way the input is
(batch 1, 1, 128, frames), so a file with a symbolic time axis is counted at any length. Only
Conv, ConvTranspose, MatMul and Gemm nodes count (what the analytic model counts as MACs);
QLinearConv / ConvInteger / MatMulInteger / QLinearMatMul are counted the same way so an int8
graph reports the MACs it runs.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dymn_edge.errors import DymnEdgeError
from dymn_edge.ort import ort_session

log = logging.getLogger(__name__)

_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


@dataclass
class GraphMacs:
    """Total and per-op-type MACs of one ONNX graph at fixed input dims."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    unknown_nodes: list[str] = field(default_factory=list)  # counted nodes without shapes


def _shape_map(model) -> dict[str, list[int]]:
    import onnx  # noqa: PLC0415

    out: dict[str, list[int]] = {}
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[vi.name] = dims
    for init in g.initializer:
        out[init.name] = list(init.dims)
    for node in g.node:  # Constant nodes carry shapes in their attribute
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = list(onnx.numpy_helper.to_array(a.t).shape)
    return out


_ONNX_TO_NUMPY = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16",
                  11: "float64"}


def _runtime_shapes(model) -> dict[str, list[int]]:
    """Every tensor's shape, from one ONNX Runtime run with all node outputs exposed."""
    import onnx  # noqa: PLC0415

    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for name in node.output:
            if name and name not in known:
                m.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    sess = ort_session(m.SerializeToString(), optimize=False)
    inits = {i.name for i in m.graph.initializer}
    feeds = {}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        feeds[inp.name] = np.zeros([d.dim_value for d in t.shape.dim],
                                   dtype=_ONNX_TO_NUMPY.get(t.elem_type, "float32"))
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, feeds)
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument
        msg = str(exc).split("Status Message:")[-1].strip()[:200]
        raise DymnEdgeError(f"the graph does not run at input {list(feeds.values())[0].shape}: "
                            f"{msg}") from exc
    out = {n: list(np.shape(v)) for n, v in zip(names, values)}
    out.update({k: list(v.shape) for k, v in feeds.items()})
    return out


def _fixed_frames(model) -> int:
    """The fixed time dim of the (B,1,128,T) input, or an error asking for ``frames``."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[-1].HasField("dim_value") and dims[-1].dim_value > 0:
            return int(dims[-1].dim_value)
    raise DymnEdgeError("the model has a dynamic time axis: pass frames=")


def _fix_inputs(model, frames: int, batch: int = 1) -> None:
    """Replace symbolic input dims: batch first, frames last (the (B,1,128,T) mel input)."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                if i == len(dims) - 1 and len(dims) == 4 and d.dim_value != frames:
                    raise DymnEdgeError(f"input '{inp.name}' has a fixed time axis of "
                                        f"{d.dim_value} frames; cannot count it at {frames}")
                continue
            value = batch if i == 0 else frames if i == len(dims) - 1 else 1
            d.Clear()
            d.dim_value = value


def count_onnx(path: str | Path, *, frames: int | None = None, batch: int = 1) -> GraphMacs:
    """MACs of the Conv/MatMul/Gemm nodes of ``path`` for input (batch, 1, 128, frames).

    ``frames`` may be left out for a file with a fixed time axis.
    """
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:
        raise DymnEdgeError("counting graph MACs needs onnx: pip install onnx") from exc
    p = Path(path)
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError and friends
        raise DymnEdgeError(f"{p}: cannot load ONNX model ({exc})") from exc
    if frames is None:
        frames = _fixed_frames(model)
    _fix_inputs(model, frames, batch)
    try:
        shapes = _runtime_shapes(model)
    except ImportError:  # no onnxruntime: static inference (may miss reshaped tensors)
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        shapes = _shape_map(model)
    else:
        shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    by_op: Counter[str] = Counter()
    unknown: list[str] = []
    for node in model.graph.node:
        op = node.op_type
        if op in _CONV:
            xi, wi = _CONV[op]
            w = shapes.get(node.input[wi])
            y = shapes.get(node.output[0])
            if not w or not y or min(y) < 0 or min(w) < 0:
                unknown.append(node.name or op)
                continue
            if op == "ConvTranspose":
                x = shapes.get(node.input[xi])
                by_op[op] += math.prod(x or [0]) * math.prod(w[1:])
                continue
            # every output element: C_in/groups * prod(kernel) MACs; w = (C_out, C_in/g, k...)
            by_op[op] += math.prod(y) * math.prod(w[1:])
        elif op in _MATMUL:
            ai, _ = _MATMUL[op]
            a = shapes.get(node.input[ai])
            y = shapes.get(node.output[0])
            if not a or not y or min(a) < 0 or min(y) < 0:
                unknown.append(node.name or op)
                continue
            if op == "Gemm":
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[0] if trans_a else a[-1]
            else:
                k = a[-1] if len(a) > 1 else a[0]
            by_op[op] += math.prod(y) * k
    if unknown:
        log.warning("%s: %d counted nodes without inferred shapes: %s", p.name, len(unknown),
                    ", ".join(unknown[:5]))
    return GraphMacs(sum(by_op.values()), dict(by_op), unknown)
