"""ONNX nodes of the fused operators (domain ``dymn.edge``) for the dynamo exporter.

:mod:`dymn_edge.models.fused` defines the operators as PyTorch custom ops;
this module gives the exporter their ONNX form: one node each in the custom domain, with the
schema the ONNX checker and onnxscript need to build the graph. The runtime side is the
OpenVINO extension in ``dymn_edge/runtime/ops/``.
"""

from __future__ import annotations

from typing import Any

from dymn_edge.models import fused

__all__ = ["translation_table", "uses_fused_ops"]


def _schemas() -> dict[str, Any]:
    """onnx ``OpSchema`` of the operators (built on demand: onnx is the export extra's)."""
    from onnx.defs import OpSchema  # noqa: PLC0415 (optional, export extra)

    types = [("T", ["tensor(float)", "tensor(double)"], "float tensors")]

    def schema(name: str, inputs: list[str], attrs: list[str]) -> OpSchema:
        return OpSchema(name, fused.DOMAIN, fused.OPSET_VERSION, doc=f"dymn-edge fused {name}",
                        inputs=[OpSchema.FormalParameter(i, "T") for i in inputs],
                        outputs=[OpSchema.FormalParameter("y", "T")], type_constraints=types,
                        attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, a) for a in attrs])

    return {
        "MixBanks": schema("MixBanks", ["att", "bank"], []),
        "DyTail": schema("DyTail", ["x", "x_bias", "att", "bank", "bias", "coef", "gate_f", "gate_t"],
                         ["stride", "pad", "act", "m"]),
        "DyExpTail": schema("DyExpTail", ["x", "w_exp", "x_bias", "att", "bank", "bias", "coef", "gate_f",
                                          "gate_t"], ["stride", "pad", "act", "m"]),
        "AxisMeans": schema("AxisMeans", ["x"], []),
        "Stem": schema("Stem", ["x", "w", "bias"], ["stride", "pad", "act"]),
    }


def translation_table() -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    import onnxscript  # noqa: PLC0415 (optional, export extra)
    import torch  # noqa: PLC0415

    opset = onnxscript.values.Opset(fused.DOMAIN, fused.OPSET_VERSION)
    schemas = _schemas()
    mix_op, tail_op, exp_tail_op, means_op, stem_op = (
        onnxscript.values.Op(opset, name, schemas[name])
        for name in ("MixBanks", "DyTail", "DyExpTail", "AxisMeans", "Stem"))

    def mix_banks(att, bank):  # noqa: ANN001, ANN202 (onnxscript symbolic tensors)
        return mix_op(att, bank)

    def dy_tail(x, x_bias, att, bank, bias, coef, gate_f, gate_t, stride, pad, act, m):  # noqa: ANN001, ANN202, PLR0913
        return tail_op(x, x_bias, att, bank, bias, coef, gate_f, gate_t,
                       stride=stride, pad=pad, act=act, m=m)

    def dy_exp_tail(x, w_exp, x_bias, att, bank, bias, coef, gate_f, gate_t, stride, pad, act, m):  # noqa: ANN001, ANN202, PLR0913
        return exp_tail_op(x, w_exp, x_bias, att, bank, bias, coef, gate_f, gate_t,
                           stride=stride, pad=pad, act=act, m=m)

    def axis_means(x):  # noqa: ANN001, ANN202
        return means_op(x)

    def stem(x, w, bias, stride, pad, act):  # noqa: ANN001, ANN202
        return stem_op(x, w, bias, stride=stride, pad=pad, act=act)

    ops = torch.ops.dymn_edge
    return {ops.mix_banks.default: mix_banks, ops.dy_tail.default: dy_tail,
            ops.dy_exp_tail.default: dy_exp_tail, ops.axis_means.default: axis_means,
            ops.stem.default: stem}


def uses_fused_ops(module: Any) -> bool:
    """Whether a patched module contains fused blocks (its export needs the table above)."""
    from dymn_edge.models.patcher import FusedDynamicBlock  # noqa: PLC0415 (torch side)

    return any(isinstance(m, FusedDynamicBlock) for m in module.modules())
