"""The operators of the ``fused`` export form, as PyTorch custom ops with exact references.

The ``fused`` form (:class:`dymn_edge.arch.DynConvStrategy.FUSED`) writes each dynamic block
with operators no stock engine has, in ONNX domain :data:`DOMAIN`:

- ``MixBanks(att (B, K), bank (K, N)) -> (B, N)``: the attention-weighted sum of the K kernel
  banks of a pointwise Dy-Conv. As a MatMul, engines run it as a fully connected layer with
  an inner size of 4, a poor shape for their kernels; it is a stream over the banks.
- ``DyTail(x, x_bias, att, bank, bias, coef, gate_f, gate_t; stride, pad, act, m)``: the
  expansion's bias and activation, the depthwise Dy-Conv with the per-sample mixed kernel,
  Dy-ReLU and coordinate attention in one pass over the tensor, instead of a dozen full-size
  elementwise passes and layout changes around a grouped convolution.
- ``DyExpTail``: ``DyTail`` with the block's expansion (the per-sample mixed 1x1 kernel)
  computed on the fly, for blocks whose expanded tensor is large and cheap to recompute (few
  input channels, many positions): the expanded tensor never goes to memory.
- ``AxisMeans(x (B, C, F, T)) -> (B, C, F + T)``: both means of the context generator in one
  pass over the block input.
- ``Stem(x (B, 1, F, T), w (C, 1, k, k), bias (C); stride, pad, act)``: the model's first
  conv with its activation, written in the plain layout the first block's operators read
  (OpenVINO's conv writes a blocked layout there, and reordering it was a full extra pass over
  the largest tensor of the model).

The functions here are the definitions: the PyTorch bodies are what the float64 tests hold to
the official model, and the C++ kernels of the OpenVINO extension
(``dymn_edge/runtime/ops/``) are tested against the same formulas. Registering the ops is
what importing this module does (``torch.library``), like defining a class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DOMAIN", "OPSET_VERSION", "ACT_CODES", "mix_banks", "dy_tail", "axis_means", "dy_exp_tail", "stem"]

#: ONNX domain and version of the fused operators (recorded in every fused file's opset imports)
DOMAIN = "dymn.edge"
OPSET_VERSION = 1

#: ``act`` attribute of DyTail: the activation applied to ``x + x_bias`` before the conv
ACT_CODES = {"identity": 0, "relu": 1, "hardswish": 2}


@torch.library.custom_op("dymn_edge::mix_banks", mutates_args=())
def mix_banks(att: Tensor, bank: Tensor) -> Tensor:
    """``att (B, K) @ bank (K, N)``: one aggregated kernel per sample."""
    return att @ bank


@mix_banks.register_fake
def _mix_banks_shape(att: Tensor, bank: Tensor) -> Tensor:
    return att.new_empty(att.shape[0], bank.shape[1])


def _activation(u: Tensor, act: int) -> Tensor:
    if act == ACT_CODES["relu"]:
        return torch.relu(u)
    if act == ACT_CODES["hardswish"]:
        return F.hardswish(u)
    if act != ACT_CODES["identity"]:
        raise ValueError(f"DyTail act must be one of {sorted(ACT_CODES.values())}, got {act}")
    return u


def _out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1


@torch.library.custom_op("dymn_edge::dy_tail", mutates_args=())
def dy_tail(x: Tensor, x_bias: Tensor, att: Tensor, bank: Tensor, bias: Tensor, coef: Tensor,
            gate_f: Tensor, gate_t: Tensor, stride: int, pad: int, act: int, m: int) -> Tensor:
    """Depthwise Dy-Conv, Dy-ReLU and coordinate attention of one block.

    ``u = act(x + x_bias)``; ``d = depthwise(u, sum_k att_k bank_k, stride, pad) + bias``;
    ``z = max_j(a_j d + b_j)`` with ``a_j, b_j`` the map-major rows of ``coef`` (B, 2 m C);
    ``y = z * sigmoid(gate_f) * sigmoid(gate_t)``.
    """
    b, c, f, t = x.shape
    k, size = bank.shape[0], bank.shape[-1]
    u = _activation(x + x_bias.view(1, c, 1, 1), act)
    w = (att @ bank.reshape(k, -1)).reshape(b * c, 1, size, size)
    d = F.conv2d(u.reshape(1, b * c, f, t), w, None, stride, pad, groups=b * c)
    d = d.reshape(b, c, d.size(-2), d.size(-1)) + bias.view(1, c, 1, 1)
    ab = coef.reshape(b, 2 * m, c, 1, 1)
    z = d * ab[:, 0] + ab[:, m]
    for j in range(1, m):
        z = torch.maximum(z, d * ab[:, j] + ab[:, m + j])
    return z * torch.sigmoid(gate_f) * torch.sigmoid(gate_t)


@dy_tail.register_fake
def _dy_tail_shape(x: Tensor, x_bias: Tensor, att: Tensor, bank: Tensor, bias: Tensor, coef: Tensor,
                   gate_f: Tensor, gate_t: Tensor, stride: int, pad: int, act: int, m: int) -> Tensor:
    size = bank.shape[-1]
    return x.new_empty(x.shape[0], x.shape[1], _out_size(x.shape[2], size, stride, pad),
                       _out_size(x.shape[3], size, stride, pad))


@torch.library.custom_op("dymn_edge::axis_means", mutates_args=())
def axis_means(x: Tensor) -> Tensor:
    """``(B, C, F, T) -> (B, C, F + T)``: the means over T (one per row), then over F (per column)."""
    return torch.cat([x.mean(3), x.mean(2)], dim=2)


@axis_means.register_fake
def _axis_means_shape(x: Tensor) -> Tensor:
    return x.new_empty(x.shape[0], x.shape[1], x.shape[2] + x.shape[3])


@torch.library.custom_op("dymn_edge::dy_exp_tail", mutates_args=())
def dy_exp_tail(x: Tensor, w_exp: Tensor, x_bias: Tensor, att: Tensor, bank: Tensor, bias: Tensor,
                coef: Tensor, gate_f: Tensor, gate_t: Tensor, stride: int, pad: int, act: int, m: int) -> Tensor:
    """:func:`dy_tail` on the expansion of the block input: ``x (B, C_in, F, T)`` mapped by each
    sample's mixed 1x1 kernel ``w_exp (B, C * C_in)`` (row-major (C, C_in)) first, never stored."""
    b, c_in, f, t = x.shape
    c = bank.shape[1]
    y = torch.bmm(w_exp.reshape(b, c, c_in), x.reshape(b, c_in, f * t)).reshape(b, c, f, t)
    return dy_tail(y, x_bias, att, bank, bias, coef, gate_f, gate_t, stride, pad, act, m)


@dy_exp_tail.register_fake
def _dy_exp_tail_shape(x: Tensor, w_exp: Tensor, x_bias: Tensor, att: Tensor, bank: Tensor, bias: Tensor,
                       coef: Tensor, gate_f: Tensor, gate_t: Tensor, stride: int, pad: int, act: int,
                       m: int) -> Tensor:
    size = bank.shape[-1]
    return x.new_empty(x.shape[0], bank.shape[1], _out_size(x.shape[2], size, stride, pad),
                       _out_size(x.shape[3], size, stride, pad))


@torch.library.custom_op("dymn_edge::stem", mutates_args=())
def stem(x: Tensor, w: Tensor, bias: Tensor, stride: int, pad: int, act: int) -> Tensor:
    """``act(conv2d(x, w, bias, stride, pad))`` on a single-channel input ``x (B, 1, F, T)``."""
    return _activation(F.conv2d(x, w, bias, stride, pad), act)


@stem.register_fake
def _stem_shape(x: Tensor, w: Tensor, bias: Tensor, stride: int, pad: int, act: int) -> Tensor:
    size = w.shape[-1]
    return x.new_empty(x.shape[0], w.shape[0], _out_size(x.shape[2], size, stride, pad),
                       _out_size(x.shape[3], size, stride, pad))
