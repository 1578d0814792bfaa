"""Per-node error report of a static int8 (QDQ) ONNX file against its float source.

Why: static int8 can fall off a cliff (the trained FSDD DyMN-S went to chance with every op
quantized). The accuracy number says *that* it broke, not *where*. This report runs the float
model and the QDQ model on the same calibration log-mels, with every intermediate tensor made
a graph output (onnxruntime's ``qdq_loss_debug`` helpers), and gives per quantized tensor:

- ``local_sqnr_db``: signal-to-quantization-noise of the tensor's own QuantizeLinear ->
  DequantizeLinear pair inside the int8 model (how badly its range / scale fits *this* tensor);
- ``sqnr_db`` / ``cosine``: the int8 model's dequantized tensor against the float model's
  (the error accumulated up to this node);
- the producing node (name, op type) and its position in the graph.

The worst tensors by local SQNR name the nodes to keep in float (``nodes_to_exclude``); the
first node where the accumulated SQNR collapses shows where the cliff starts. The report is
written as JSON and as a small markdown table next to the exported file.

The per-node numbers come from the QDQ graph run as written (every optimisation off: float
ops between exact Q/DQ pairs), which is the quantization's error. The deployed file runs
ONNX Runtime's fused integer kernels (QLinearConv, QLinearMatMul, ...), which can add an
error of their own: ``kernel_sqnr_db`` compares the graph outputs of the two runs. On the
trained FSDD DyMN-S with u8 activations / s8 weights it was 16.6 dB on this AVX2 CPU
without VNNI (MLAS's u8 x s8 kernel adds pairs of products in int16, ``vpmaddubsw``, which
saturates when both weights are near +-127 and both activations near 255): 0.92 accuracy
against 0.9667 for the same file with the precise kernel. That cliff is invisible per node.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dymn_edge.ort import ort_session

log = logging.getLogger(__name__)

__all__ = ["NodeError", "QuantReport", "add_heldout", "quant_report", "sqnr_db", "write_report"]


@dataclass
class NodeError:
    """Error of one quantized activation tensor."""

    tensor: str
    node: str  # producing node in the float graph ("" for a graph input)
    op_type: str
    scope: str  # nearest parameter name upstream (e.g. ``layers.12.context_gen``): where in the model
    order: int  # topological position of the producer (-1 for a graph input)
    local_sqnr_db: float  # the tensor's own Q/DQ pair (scale / range fit)
    sqnr_db: float | None  # int8 model vs float model at this tensor (accumulated)
    cosine: float | None


@dataclass
class NodeGrowth:
    """Error a node adds: SQNR of its worst input minus SQNR of its output (int8 vs float)."""

    node: str
    op_type: str
    scope: str
    order: int
    input_sqnr_db: float
    output_sqnr_db: float
    growth_db: float
    quantized: bool  # the output goes through a Q/DQ pair in the int8 model


@dataclass
class QuantReport:
    """All quantized tensors in graph order, plus where it goes wrong."""

    clips: int
    nodes: list[NodeError]
    output_sqnr_db: dict[str, float]  # per graph output, int8 vs float
    growth: list[NodeGrowth]  # every node of the float graph: how much error it adds
    kernel_sqnr_db: dict[str, float] | None = None  # per output: fused int8 kernels vs the QDQ graph run as written

    def worst_growth(self, n: int = 10) -> list[NodeGrowth]:
        """The ``n`` nodes whose output is furthest below their inputs (where the error is made)."""
        return sorted(self.growth, key=lambda g: -g.growth_db)[:n]

    def worst(self, n: int = 10, key: str = "local_sqnr_db") -> list[NodeError]:
        """The ``n`` tensors with the lowest SQNR under ``key`` (local or accumulated)."""
        rows = [r for r in self.nodes if getattr(r, key) is not None]
        return sorted(rows, key=lambda r: getattr(r, key))[:n]

    def first_below(self, db: float) -> NodeError | None:
        """The first tensor (graph order) whose accumulated SQNR is below ``db``."""
        for r in self.nodes:
            if r.sqnr_db is not None and r.sqnr_db < db:
                return r
        return None

    def to_dict(self, top: int = 10) -> dict:
        first = self.first_below(10.0)
        return {"clips": self.clips, "output_sqnr_db": self.output_sqnr_db,
                "kernel_sqnr_db": self.kernel_sqnr_db,
                "first_below_10db": asdict(first) if first else None,
                "worst_growth": [asdict(g) for g in self.worst_growth(top)],
                "worst_local": [asdict(r) for r in self.worst(top)],
                "worst_accumulated": [asdict(r) for r in self.worst(top, "sqnr_db")],
                "nodes": [asdict(r) for r in self.nodes]}

    def markdown(self, top: int = 10) -> str:
        """Top-``top`` worst tensors (local SQNR) and the accumulated error at each."""
        lines = [f"# int8 per-node error ({self.clips} calibration clips)", "",
                 "Outputs (int8 vs float, SQNR dB): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in self.output_sqnr_db.items()), ""]
        if self.kernel_sqnr_db:
            worst = min(self.kernel_sqnr_db.values())
            lines += ["Deployed kernels vs the QDQ graph as written (SQNR dB): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in self.kernel_sqnr_db.items())
                      + (" -- the runtime's fused int8 kernels add error the per-node table does not "
                         "show (e.g. u8 x s8 saturation on x86 without VNNI: use s8 activations "
                         "or reduce_range)" if worst < 25.0 else ""), ""]
        first = self.first_below(10.0)
        if first is not None:
            lines += [f"First tensor below 10 dB accumulated SQNR: `{first.tensor}` "
                      f"({first.op_type} `{first.node}` in `{first.scope}`, {first.sqnr_db:.1f} dB)", ""]
        lines += [f"## {top} nodes that add the most error (worst input SQNR - output SQNR)", "",
                  "| # | node | op | scope | quantized | in dB | out dB | added dB |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in self.worst_growth(top):
            lines.append(f"| {g.order} | `{g.node}` | {g.op_type} | `{g.scope}` | "
                         f"{'yes' if g.quantized else 'no'} | {g.input_sqnr_db:.1f} | "
                         f"{g.output_sqnr_db:.1f} | {g.growth_db:.1f} |")
        lines += ["", f"## {top} worst quantized tensors (own Q/DQ pair)", "",
                  "| # | tensor | op | scope | local SQNR dB | SQNR vs float dB | cosine |",
                  "|---|---|---|---|---|---|---|"]
        for r in self.worst(top):
            acc = "-" if r.sqnr_db is None else f"{r.sqnr_db:.1f}"
            cos = "-" if r.cosine is None else f"{r.cosine:.4f}"
            lines.append(f"| {r.order} | `{r.tensor}` | {r.op_type} | `{r.scope}` | "
                         f"{r.local_sqnr_db:.1f} | {acc} | {cos} |")
        return "\n".join(lines) + "\n"


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``x`` against ``ref`` in dB (eps-floored both ways)."""
    eps = float(np.finfo(np.float32).eps)
    num = max(float(np.linalg.norm(ref)), eps)
    den = max(float(np.linalg.norm(ref - x)), eps)
    return 20.0 * math.log10(num / den)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


class _Reader:
    def __init__(self, name: str, mels: np.ndarray) -> None:
        self.name, self.mels, self.i = name, mels, 0

    def get_next(self):
        if self.i >= len(self.mels):
            return None
        self.i += 1
        return {self.name: self.mels[self.i - 1:self.i]}

    def __iter__(self):
        self.i = 0
        while (item := self.get_next()) is not None:
            yield item


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _tensor_sqnr(float_acts: dict, qdq_acts: dict, quantized: dict) -> dict[str, float]:
    """SQNR of every tensor both graphs have: int8 (dequantized) against float."""
    acc: dict[str, float] = {}
    for name, ref in float_acts.items():
        if name in quantized and quantized[name].sqnr_db is not None:
            acc[name] = quantized[name].sqnr_db
        elif name in qdq_acts and len(qdq_acts[name]) == len(ref):
            a, b = _flat(ref), _flat(qdq_acts[name])
            if a.shape == b.shape:
                acc[name] = sqnr_db(a, b)
    return acc


def _growth(float_model, acc: dict[str, float], quantized: dict, scopes: dict) -> list[NodeGrowth]:
    """Per node: how much SQNR it loses between its worst input and its output."""
    growth: list[NodeGrowth] = []
    for k, n in enumerate(float_model.graph.node):
        if n.op_type in _MOVES:  # a piece of a tensor can have a lower SQNR than the whole
            continue
        ins = [acc[i] for i in n.input if i in acc]
        outs = [acc[o] for o in n.output if o in acc]
        if ins and outs:
            worst_in, out = min(ins), min(outs)
            growth.append(NodeGrowth(n.name, n.op_type, scopes.get(n.output[0], ""), k, worst_in, out,
                                     worst_in - out, any(o in quantized for o in n.output)))
    return growth


def quant_report(float_path: str | Path, qdq_path: str | Path, mels: np.ndarray) -> QuantReport:
    """Compare every quantized activation of ``qdq_path`` with ``float_path`` on ``mels``.

    ``float_path`` must be the graph the quantizer was given (after its pre-processing), so
    tensor names match. ``mels``: (N, 1, 128, T) float32, a few clips suffice (8-16).
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import qdq_loss_debug as dbg  # noqa: PLC0415

    float_model = onnx.load(str(float_path), load_external_data=False)
    input_name = float_model.graph.input[0].name
    producer: dict[str, tuple[str, str, int]] = {i.name: ("", "input", -1) for i in float_model.graph.input}
    for k, n in enumerate(float_model.graph.node):
        for o in n.output:
            producer[o] = (n.name, n.op_type, k)
    scopes = _scopes(float_model)
    relu_only = _feeds_relu_only(float_model)
    outputs = [o.name for o in float_model.graph.output]
    mels = np.ascontiguousarray(mels, np.float32)
    with tempfile.TemporaryDirectory(prefix="dymn-edge-qreport-") as tmp:
        aug_f, aug_q = Path(tmp) / "float_aug.onnx", Path(tmp) / "qdq_aug.onnx"
        dbg.modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        dbg.modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        float_acts = dbg.collect_activations(str(aug_f), _Reader(input_name, mels))
        qdq_acts = dbg.collect_activations(str(aug_q), _Reader(input_name, mels))
    match = dbg.create_activation_matching(qdq_acts, float_acts)
    rows: list[NodeError] = []
    for name, m in match.items():
        if "pre_qdq" not in m or "post_qdq" not in m:
            continue
        pre, post = _flat(m["pre_qdq"]), _flat(m["post_qdq"])
        ref = m.get("float")
        f = _flat(ref) if ref else None
        if name in relu_only:  # the quantizer gives it the ReLU's [0, max] range: negatives are
            # clipped on purpose and never seen downstream; judge what the ReLU passes on
            pre, post = np.maximum(pre, 0.0), np.maximum(post, 0.0)
            f = None if f is None else np.maximum(f, 0.0)
        sq = cos = None
        if f is not None and f.shape == post.shape:
            sq, cos = sqnr_db(f, post), _cosine(f, post)
        node, op, order = producer.get(name, ("?", "?", 10 ** 9))
        rows.append(NodeError(name, node, op, scopes.get(name, ""), order, sqnr_db(pre, post), sq, cos))
    rows.sort(key=lambda r: r.order)
    quantized = {r.tensor: r for r in rows}
    acc = _tensor_sqnr(float_acts, qdq_acts, quantized)
    growth = _growth(float_model, acc, quantized, scopes)
    out_sqnr = {o: acc[o] for o in outputs if o in acc}
    return QuantReport(len(mels), rows, out_sqnr, growth, kernel_sqnr(qdq_path, mels))


def kernel_sqnr(qdq_path: str | Path, mels: np.ndarray) -> dict[str, float]:
    """Per graph output: SQNR of the deployed run (all optimisations, fused integer kernels)
    against the QDQ graph run as written (no optimisation: float ops between Q/DQ pairs).

    High (33-170 dB per clip on the FSDD DyMN-S: rounding ties decided differently propagate)
    when the runtime's integer kernels compute the graph; low (16 dB) when a kernel
    saturates or approximates (the AVX2 u8 x s8 case above).
    """
    runs = []
    for optimize in (False, True):
        sess = ort_session(qdq_path, threads=1, optimize=optimize)
        name = sess.get_inputs()[0].name
        outs = [sess.run(None, {name: np.ascontiguousarray(mels[i:i + 1], np.float32)}) for i in range(len(mels))]
        runs.append({o.name: _flat([r[k] for r in outs]) for k, o in enumerate(sess.get_outputs())})
    return {k: sqnr_db(runs[0][k], runs[1][k]) for k in runs[0]}


#: ops that only move or cut data: they add no error of their own
_MOVES = ("Split", "Concat", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Slice", "Gather",
          "Flatten", "Identity", "Expand")


def _scopes(model) -> dict[str, str]:
    """Tensor -> the nearest parameter name upstream, minus its last part (``layers.3.conv``)."""
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, str] = {}
    for n in model.graph.node:
        scope = ""
        for i in n.input:
            if i in inits and "." in i:
                scope = i.rsplit(".", 1)[0]
                break
        if not scope:
            scope = next((out[i] for i in n.input if out.get(i)), "")
        for o in n.output:
            out[o] = scope
    return out


def _feeds_relu_only(model) -> set[str]:
    """Tensors whose every consumer is a Relu (and that are no graph output)."""
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    outputs = {o.name for o in model.graph.output}
    return {t for t, ops in consumers.items() if t not in outputs and ops and all(o == "Relu" for o in ops)}


def add_heldout(model_path: str | Path, record: dict) -> tuple[Path, Path]:
    """Add the held-out check (``ModelMetadata.calibration["heldout"]``) to the report beside
    ``model_path``: the per-node table is on calibration clips, this is on clips it never saw."""
    model_path = Path(model_path)
    js = model_path.with_name(model_path.name + ".quant-report.json")
    md = model_path.with_name(model_path.name + ".quant-report.md")
    data = json.loads(js.read_text())
    data["heldout"] = record
    js.write_text(json.dumps(data, indent=1))
    lines = ["", f"## Held-out audio ({record['split']})", "",
             f"Bound: {record['measure']} drop <= {record['bound_points']:g} points; kept: "
             f"`{record['kept']}`.", "",
             "| recipe | clips | fp32 acc | int8 acc | fp32 mAP | int8 mAP | drop (points) | "
             "top-1 agreement | logits SQNR dB |", "|---|---|---|---|---|---|---|---|---|"]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    for c in record["checks"]:
        lines.append(f"| `{c['recipe']}` | {c['clips']} | {num(c['fp32_accuracy'])} | "
                     f"{num(c['int8_accuracy'])} | {num(c['fp32_map'])} | {num(c['int8_map'])} | "
                     f"{c['drop_points']:+.2f} ({c['measure']}) | {100 * c['top1_agreement']:.1f} % | "
                     f"{c['sqnr_db']:.1f} |")
    md.write_text(md.read_text() + "\n".join(lines) + "\n")
    return js, md


def write_report(report: QuantReport, model_path: str | Path, top: int = 10) -> tuple[Path, Path]:
    """``<file>.quant-report.json`` and ``.md`` beside ``model_path``; returns both paths."""
    model_path = Path(model_path)
    js = model_path.with_name(model_path.name + ".quant-report.json")
    md = model_path.with_name(model_path.name + ".quant-report.md")
    js.write_text(json.dumps(report.to_dict(top), indent=1, allow_nan=False
                             if all(math.isfinite(r.local_sqnr_db) for r in report.nodes) else True))
    md.write_text(report.markdown(top))
    return js, md
