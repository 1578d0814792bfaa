"""Export form of DyMN / MN: a patched deep copy built from the fewest ops engines run fast.

The training-faithful modules (:mod:`dymn_edge.models.dymn`, :mod:`dymn_edge.models.mn`)
load the official checkpoints and compute exactly what EfficientAT computes, including ops
that export badly. :func:`make_exportable` rewrites a deep copy (as timm's
``set_exportable`` / Optimum's ``ModelPatcher`` do) into an equivalent graph
(:class:`LeanDynamicBlock` per dynamic block):

- One coefficient head per block: the three Dy-Conv attentions (temperature folded in) and
  the 2M Dy-ReLU coefficient vectors all depend only on the context vector, so they are one
  Linear and one split, not nine small Linear / slice / reshape chains.
- Pointwise Dy-Conv: ``softmax`` attention ``@`` kernel bank -> per-sample weight, then one
  ``bmm`` over the positions, in the activations' layout (:class:`Layout`): channels-last
  (LiteRT: its kernels are NHWC, so the graph has no TRANSPOSE at all) or channels-first
  (ONNX Runtime: Conv is NCHW). Any batch and time length. The official 4-D attention
  matmul (a rank-4 BATCH_MATMUL TFLite rejects) and batch-folded grouped conv (no dynamic
  batch) are gone.
- Depthwise Dy-Conv in one of the exact forms of :class:`DynConvStrategy`, chosen per
  format from measurements (``dymn_edge/formats.py``).
- BatchNorm folded into every kernel bank (exact: the attention sums to 1, so a per-channel
  shift after the conv is the shift of every kernel) and into the ordinary conv-BN pairs.
- Dy-ReLU in 4-D: ``max_j(a_j * x + b_j)`` with ``a, b = 2 lambda sigmoid(z) + (init - lambda)``
  (the official ``(2 sigmoid(z) - 1) lambda + init`` with its constants folded), not the
  official 5-D broadcast. (Folding the positive frequency gate into ``a_j, b_j``, one
  full-size multiply less per block, and a 2-D GEMM taking the pointwise bias were measured
  per block in both engines: no gain, so not done.)
- Means instead of adaptive pooling everywhere (the ONNX dynamo exporter turns adaptive
  pooling into a fixed-kernel AveragePool: silently wrong at other lengths); the context
  generator's stride-2 average pooling is fused into its coordinate convs.

Every rewrite is exact: the float64 tests in ``tests/models/test_patcher.py`` hold the
patched copy to ~1e-14 of the original for every strategy and layout.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymn_edge.arch import DynConvStrategy, Layout, depthwise_form, strategy_supports_dynamic_batch
from dymn_edge.models import fused as fused_ops
from dymn_edge.models.dymn import DyMN, DynamicConv, DynamicInvertedResidual, DyReLUB
from dymn_edge.models.mn import MN, InvertedResidual

__all__ = [
    "DynConvStrategy", "Layout", "make_exportable", "FusedDynamicBlock", "FusedStem",
    "strategy_supports_dynamic_batch", "ExportableTagger", "LeanDynamicBlock", "LeanDepthwise",
    "patch_block", "fold_conv_bn", "fold_conv_norm_act", "fused_stem",
]

# --------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------

def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm, computed in float64 for exactness."""
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d (with bias) equal to ``bn(conv(x))`` in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode, dtype=conv.weight.dtype)
    dtype = conv.weight.dtype
    with torch.no_grad():
        fused.weight.copy_(w.to(dtype))
        fused.bias.copy_(b.to(dtype))
    return fused


def fold_conv_norm_act(seq: nn.Sequential) -> nn.Sequential:
    """``conv_norm_act`` (Conv, BN[, act]) -> (Conv with bias[, act]); other modules as they are."""
    if len(seq) >= 2 and isinstance(seq[0], nn.Conv2d) and isinstance(seq[1], nn.BatchNorm2d):
        return nn.Sequential(fold_conv_bn(seq[0], seq[1]), *list(seq)[2:])
    return seq

# --------------------------------------------------------------------------------------------
# Lean dynamic block
# --------------------------------------------------------------------------------------------

def _bank_and_bias(conv: DynamicConv, norm: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """Kernel bank (K, C_out, C_in/g, k, k) with a following BatchNorm folded in, and its shift."""
    bank = conv.weight.detach().double().reshape(
        conv.k, conv.out_channels, conv.in_channels // conv.groups, conv.kernel_size,
        conv.kernel_size)
    dtype = conv.weight.dtype
    if norm is None or isinstance(norm, nn.Identity):
        return bank.to(dtype), None
    if not isinstance(norm, nn.BatchNorm2d):
        raise TypeError(f"cannot fold {type(norm).__name__} into a Dy-Conv")
    scale, shift = _bn_scale_shift(norm)
    return (bank * scale.view(1, -1, 1, 1, 1)).to(dtype), shift.to(dtype)


def _pool_conv(conv: nn.Conv2d, axis: int) -> nn.Conv2d:
    """``conv(AvgPool(k=3, s=2, p=1, count_include_pad))`` along ``axis`` (2=F, 3=T) as one conv.

    Exact: with zero padding counted the pool is a fixed conv with taps 1/3, and two linear
    maps compose into one (the 1x1 conv's bias is added once after).
    """
    ks, st, pd = ((3, 1), (2, 1), (1, 0)) if axis == 2 else ((1, 3), (1, 2), (0, 1))
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, ks, st, pd, bias=conv.bias is not None,
                      dtype=conv.weight.dtype)
    with torch.no_grad():
        w = conv.weight.detach().double() / 3.0  # (C_out, C_in, 1, 1)
        fused.weight.copy_(w.expand(-1, -1, *ks))
        if conv.bias is not None:
            fused.bias.copy_(conv.bias.detach())
    return fused


def conv_nhwc(conv: nn.Module, x: Tensor) -> Tensor:
    """An NCHW conv applied to a channels-last tensor (the converters cancel the permute pairs)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ChannelsLast(nn.Module):
    """(B, C, F, T) -> (B, F, T, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class NCHWModule(nn.Module):
    """Runs an NCHW module (stem, static block, out conv) inside a channels-last graph."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return conv_nhwc(self.module, x)


def _linear_from_conv(conv: nn.Conv2d) -> nn.Linear:
    """The 1x1 ``conv`` as a Linear over the channel (last) axis."""
    lin = nn.Linear(conv.in_channels, conv.out_channels, bias=conv.bias is not None,
                    dtype=conv.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.detach()[:, :, 0, 0])
        if conv.bias is not None:
            lin.bias.copy_(conv.bias.detach())
    return lin


def _coord_conv(conv: nn.Conv2d, stride: int, axis: int) -> nn.Conv2d:
    """``conv_f`` / ``conv_t`` with the block's stride-2 average pooling fused in (see _pool_conv)."""
    return _pool_conv(conv, axis) if stride > 1 else copy.deepcopy(conv)


class LeanDynamicBlock(nn.Module):
    """Dynamic inverted residual with the fewest ops an engine has to run.

    Same computation as the official block, rewritten:

    - one coefficient head: every quantity that depends only on the context vector (the
      three Dy-Conv attentions with their temperature folded in, and the 2M Dy-ReLU
      coefficient vectors) is one Linear, split once;
    - Dy-ReLU coefficients ``2 * lambda * sigmoid(z) + (init - lambda)``: the affine map of
      the official ``(2 sigmoid(z) - 1) * lambda + init`` folded into two constants;
    - the context generator pools both axes into one sequence (F + T positions), maps it with
      one Linear, and splits it once;
    - pointwise Dy-Convs are one matmul with the aggregated weight, in the layout of the
      activations (``layout``): channels-last needs no transpose at all;
    - BatchNorm folded into every kernel bank (the attention sums to 1).
    """

    def __init__(self, block: DynamicInvertedResidual, *,
                 strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                 layout: Layout | str = Layout.NCHW) -> None:
        super().__init__()
        self.strategy, self.layout = DynConvStrategy(strategy), Layout(layout)
        self.use_res_connect = block.use_res_connect
        cg = block.context_gen
        self.has_exp = isinstance(block.exp_conv, DynamicConv)
        # context generator: joint (conv+BN) as a Linear over channels, coordinate convs
        self.joint = _linear_from_conv(fold_conv_bn(cg.joint_conv, cg.joint_norm))
        self.joint_act = copy.deepcopy(cg.joint_act)
        self.conv_f = _coord_conv(cg.conv_f, cg.stride, 2)
        self.conv_t = _coord_conv(cg.conv_t, cg.stride, 3)
        # Dy-Convs in order (exp?, depth, proj); banks with BN folded
        convs = ([(block.exp_conv, block.exp_norm)] if self.has_exp else []) + [
            (block.depth_conv, block.depth_norm), (block.proj_conv, block.proj_norm)]
        self.k = convs[0][0].k
        dy: DyReLUB = block.depth_act
        self.m, self.channels = dy.m, dy.channels
        rows_w, rows_b = [], []
        for conv, _ in convs:
            lin = conv.residuals[0]
            rows_w.append(lin.weight.detach().double() / conv.temperature)
            rows_b.append(lin.bias.detach().double() / conv.temperature)
        lin = dy.coef_net[0]
        order = torch.arange(self.channels * 2 * self.m).view(self.channels, 2 * self.m).t().reshape(-1)
        rows_w.append(lin.weight.detach().double()[order])
        rows_b.append(lin.bias.detach().double()[order])
        dtype = lin.weight.dtype
        self.head = nn.Linear(lin.in_features, sum(w.size(0) for w in rows_w), dtype=dtype)
        with torch.no_grad():
            self.head.weight.copy_(torch.cat(rows_w).to(dtype))
            self.head.bias.copy_(torch.cat(rows_b).to(dtype))
        self.n_att = len(convs)
        lam = dy.lambdas.detach().double().repeat_interleave(self.channels)
        init = dy.init_v.detach().double().repeat_interleave(self.channels)
        self.register_buffer("coef_scale", (2.0 * lam).to(dtype))
        self.register_buffer("coef_shift", (init - lam).to(dtype))
        nhwc = self.layout is Layout.NHWC
        self.pointwise = nn.ParameterList()
        self.pointwise_bias = nn.ParameterList()
        for conv, norm in [convs[0], convs[-1]] if self.has_exp else [convs[-1]]:
            bank, bias = _bank_and_bias(conv, norm)  # (K, C_out, C_in, 1, 1)
            bank = bank[..., 0, 0]
            if nhwc:
                bank = bank.transpose(1, 2)  # (K, C_in, C_out): x (B, FT, C_in) @ W
            self.pointwise.append(nn.Parameter(bank.reshape(self.k, -1).contiguous()))
            shape = (-1,) if nhwc else (-1, 1, 1)
            self.pointwise_bias.append(nn.Parameter(bias.reshape(shape).clone()))
        self.pw_shapes = [(c.in_channels, c.out_channels) for c, _ in
                          ([convs[0], convs[-1]] if self.has_exp else [convs[-1]])]
        self.exp_act = (copy.deepcopy(block.exp_act.module) if self.has_exp else nn.Identity())
        dconv, dnorm = convs[-2]
        self.depthwise = _lean_depthwise(dconv, dnorm, self.strategy)

    # -- pieces ------------------------------------------------------------------------------
    def _context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(vector (B, H), freq gate, time gate) with gates shaped to broadcast over x."""
        if self.layout is Layout.NHWC:
            f, t = x.size(1), x.size(2)
            seq = torch.cat([x.mean(2), x.mean(1)], dim=1)  # (B, F+T, C)
            g = self.joint_act(self.joint(seq))  # (B, F+T, H)
            g_f, g_t = torch.split(g, [f, t], dim=1)
            a_f = conv_nhwc(self.conv_f, g_f.unsqueeze(2))  # (B, F', 1, C_exp)
            a_t = conv_nhwc(self.conv_t, g_t.unsqueeze(1))  # (B, 1, T', C_exp)
            return g.mean(1), a_f, a_t
        f, t = x.size(2), x.size(3)
        seq = torch.cat([x.mean(3), x.mean(2)], dim=2).transpose(1, 2)  # (B, F+T, C)
        g = self.joint_act(self.joint(seq)).transpose(1, 2)  # (B, H, F+T)
        g_f, g_t = torch.split(g, [f, t], dim=2)
        # contiguous: the transposed slices are channels-last-like strided, and a conv on them
        # makes torch.export guard the batch at 1 (the memory format depends on whether B == 1)
        a_f = self.conv_f(g_f.contiguous().unsqueeze(3))
        a_t = self.conv_t(g_t.contiguous().unsqueeze(2))
        return g.mean(2), a_f, a_t

    def _pointwise(self, i: int, x: Tensor, att: Tensor) -> Tensor:
        c_in, c_out = self.pw_shapes[i]
        w = torch.mm(att, self.pointwise[i])
        if self.layout is Layout.NHWC:
            b, f, t, _ = x.shape
            y = torch.bmm(x.reshape(b, f * t, c_in), w.reshape(b, c_in, c_out))
            return y.reshape(b, f, t, c_out) + self.pointwise_bias[i]
        b, _, f, t = x.shape
        y = torch.bmm(w.reshape(b, c_out, c_in), x.reshape(b, c_in, f * t))
        return y.reshape(b, c_out, f, t) + self.pointwise_bias[i]

    def forward(self, x: Tensor) -> Tensor:
        v, gate_f, gate_t = self._context(x)
        *att_z, coef_z = torch.split(self.head(v), [self.k] * self.n_att + [2 * self.m * self.channels], dim=1)
        att = [torch.softmax(a, dim=1) for a in att_z]
        coefs = torch.sigmoid(coef_z) * self.coef_scale + self.coef_shift  # (B, 2M*C), map-major
        shape = (-1, 1, 1, 2 * self.m * self.channels) if self.layout is Layout.NHWC else (
            -1, 2 * self.m * self.channels, 1, 1)
        parts = torch.split(coefs.reshape(shape), self.channels, dim=3 if self.layout is Layout.NHWC else 1)
        y = x
        if self.has_exp:
            y = self.exp_act(self._pointwise(0, x, att[0]))
        y = self.depthwise(y, att[-2], self.layout)
        act = y * parts[0] + parts[self.m]
        for j in range(1, self.m):
            act = torch.maximum(act, y * parts[j] + parts[self.m + j])
        y = act * torch.sigmoid(gate_f) * torch.sigmoid(gate_t)
        y = self._pointwise(len(self.pw_shapes) - 1, y, att[-1])
        return y + x if self.use_res_connect else y


#: blocks whose expansion has at most this many input channels compute it inside the tail
#: (``DyExpTail``): with few inputs the expansion is memory-bound (it writes a tensor
#: C_exp / C_in times larger than it reads), so computing it per band of rows, never stored,
#: is cheaper. Measured on DyMN-M in OpenVINO (1 thread, 10 s, DyMN-M / MN-10 in one run):
#: at most 16 / 24 / 40 / 80 / every block -> 1.63 / 1.60 / 1.60 / 1.66 / 1.74 (at 1 s 40 and
#: 80 were best, 3.07-3.12 vs 3.27-3.31)
EXPANSION_IN_TAIL_MAX_IN = 40


class FusedDynamicBlock(LeanDynamicBlock):
    """The lean block with its depthwise tail and bank mixing as the two fused operators.

    Same context path and coefficient head as :class:`LeanDynamicBlock` (NCHW); then
    ``MixBanks`` for each pointwise kernel and one ``DyTail`` for the expansion's bias and
    activation, the depthwise Dy-Conv, Dy-ReLU and coordinate attention
    (:mod:`dymn_edge.models.fused` defines both). Engines without the operators cannot run
    it: it is an export form a file opts into (``--strategy fused``).
    """

    def __init__(self, block: DynamicInvertedResidual) -> None:
        super().__init__(block, strategy=DynConvStrategy.FUSED, layout=Layout.NCHW)
        dw = self.depthwise
        size = dw.kernel_size
        self.tail_bank = nn.Parameter(dw.bank.detach().reshape(self.k, self.channels, size, size).clone())
        bias = dw.bias.detach() if dw.bias is not None else torch.zeros(self.channels, dtype=dw.bank.dtype)
        self.tail_bias = nn.Parameter(bias.clone())
        self.tail_stride, self.tail_pad = dw.stride, dw.padding
        self.tail_act = _act_code(self.exp_act)
        x_bias = (self.pointwise_bias[0].detach().reshape(-1) if self.has_exp
                  else torch.zeros(self.channels, dtype=dw.bank.dtype))
        self.register_buffer("tail_x_bias", x_bias.clone())
        self.exp_in_tail = self.has_exp and self.pw_shapes[0][0] <= EXPANSION_IN_TAIL_MAX_IN
        cg = block.context_gen
        self.ctx_stride = cg.stride
        self.gate_f_w, self.gate_f_b = _matmul_params(cg.conv_f)
        self.gate_t_w, self.gate_t_b = _matmul_params(cg.conv_t)
        self.joint_w = nn.Parameter(self.joint.weight.detach().clone())
        self.joint_b = nn.Parameter(self.joint.bias.detach().reshape(-1, 1).clone())
        del self.depthwise, self.conv_f, self.conv_t, self.joint

    def _context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The context generator as matmuls on (B, channels, positions) rows.

        Every tensor of the path stays in the plain layout the two operators read, so no
        engine reorders the gates; the stride-2 average pooling runs before the coordinate
        matmuls, in the official order.
        """
        b, _, f, t = x.shape
        seq = fused_ops.axis_means(x)  # (B, C, F+T): both means in one pass
        g = self.joint_act(torch.matmul(self.joint_w, seq) + self.joint_b)  # (B, H, F+T)
        g_f, g_t = torch.split(g, [f, t], dim=2)
        if self.ctx_stride > 1:
            g_f, g_t = F.avg_pool1d(g_f, 3, 2, 1), F.avg_pool1d(g_t, 3, 2, 1)
        a_f = torch.matmul(self.gate_f_w, g_f) + self.gate_f_b  # (B, C_exp, F')
        a_t = torch.matmul(self.gate_t_w, g_t) + self.gate_t_b  # (B, C_exp, T')
        return g.mean(2), a_f.unsqueeze(3), a_t.unsqueeze(2)

    def _pointwise(self, i: int, x: Tensor, att: Tensor, *, bias: bool = True) -> Tensor:
        c_in, c_out = self.pw_shapes[i]
        b, _, f, t = x.shape
        w = fused_ops.mix_banks(att, self.pointwise[i])
        y = torch.bmm(w.reshape(b, c_out, c_in), x.reshape(b, c_in, f * t)).reshape(b, c_out, f, t)
        return y + self.pointwise_bias[i] if bias else y

    def forward(self, x: Tensor) -> Tensor:
        v, gate_f, gate_t = self._context(x)
        *att_z, coef_z = torch.split(self.head(v), [self.k] * self.n_att + [2 * self.m * self.channels], dim=1)
        att = [torch.softmax(a, dim=1) for a in att_z]
        coefs = torch.sigmoid(coef_z) * self.coef_scale + self.coef_shift  # (B, 2M*C), map-major
        tail = (att[-2], self.tail_bank, self.tail_bias, coefs, gate_f, gate_t, self.tail_stride,
                self.tail_pad, self.tail_act, self.m)
        if self.exp_in_tail:  # the expanded tensor is computed inside the tail, never stored
            w_exp = fused_ops.mix_banks(att[0], self.pointwise[0])
            y = fused_ops.dy_exp_tail(x, w_exp, self.tail_x_bias, *tail)
        else:
            y = self._pointwise(0, x, att[0], bias=False) if self.has_exp else x
            y = fused_ops.dy_tail(y, self.tail_x_bias, *tail)
        return self._projection(y, x, att[-1])

    def _projection(self, y: Tensor, x: Tensor, att: Tensor) -> Tensor:
        """The last pointwise Dy-Conv, its bias and the residual, on (B, C, F*T) rows.

        Adding in 3-D keeps the sums in the matmul's plain layout: on the 4-D tensor OpenVINO
        picked a blocked layout for the two adds and reordered in and out of it every block.
        """
        i = len(self.pw_shapes) - 1
        c_in, c_out = self.pw_shapes[i]
        b, _, f, t = y.shape
        w = fused_ops.mix_banks(att, self.pointwise[i])
        out = torch.bmm(w.reshape(b, c_out, c_in), y.reshape(b, c_in, f * t)) + self.pointwise_bias[i].reshape(c_out, 1)
        if self.use_res_connect:
            out = out + x.reshape(b, c_out, f * t)
        return out.reshape(b, c_out, f, t)


class FusedStem(nn.Module):
    """The first conv (BN folded) and its activation as the fused ``Stem`` operator.

    OpenVINO's own conv writes a blocked layout that the first block's operators cannot read,
    so it reordered the model's largest tensor once more (0.35 of 15 ms for DyMN-M at 10 s).
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone())
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
        self.bias = nn.Parameter(bias.clone())
        self.stride, self.pad, self.act = conv.stride[0], conv.padding[0], _act_code(act)

    def forward(self, x: Tensor) -> Tensor:
        return fused_ops.stem(x, self.weight, self.bias, self.stride, self.pad, self.act)


def fused_stem(stem: nn.Sequential) -> nn.Module:
    """``stem`` (Conv with bias[, act], BN folded) as :class:`FusedStem` where the operator takes
    it (one input channel, square kernel, equal strides and pads, a known activation); else as is."""
    mods = list(stem)
    conv, act = mods[0], (mods[1] if len(mods) == 2 else nn.Identity())
    takes = (len(mods) in (1, 2) and isinstance(conv, nn.Conv2d) and conv.in_channels == 1 and conv.groups == 1
             and conv.kernel_size[0] == conv.kernel_size[1] and conv.stride[0] == conv.stride[1]
             and isinstance(conv.padding, tuple) and conv.padding[0] == conv.padding[1]
             and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
             and isinstance(act, (nn.Identity, nn.ReLU, nn.Hardswish)))
    return FusedStem(conv, act) if takes else stem


def _matmul_params(conv: nn.Conv2d) -> tuple[nn.Parameter, nn.Parameter]:
    """A 1x1 conv as (weight (C_out, C_in), bias (C_out, 1)) for ``W @ rows + b``."""
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=conv.weight.dtype)
    return (nn.Parameter(conv.weight.detach()[:, :, 0, 0].clone()),
            nn.Parameter(bias.reshape(-1, 1).clone()))


def _act_code(module: nn.Module) -> int:
    """DyTail's ``act`` attribute for the expansion's activation module."""
    for kind, code in ((nn.Identity, "identity"), (nn.ReLU, "relu"), (nn.Hardswish, "hardswish")):
        if isinstance(module, kind):
            return fused_ops.ACT_CODES[code]
    raise TypeError(f"the fused form has no code for the activation {type(module).__name__}")


class LeanDepthwise(nn.Module):
    """Depthwise Dy-Conv in one of the exact forms of :class:`DynConvStrategy`, in either layout.

    - ``runtime_weight``: one conv with the aggregated (C, 1, k, k) weight (batch 1).
    - ``static_k``: K static depthwise convs weighted by the attention (any batch).

    Measured and dropped (DyMN-M, 10 s, 1 thread, slower in both engines): one static conv
    with K outputs per channel mixed by a matmul (the matmul with an inner size K=4 ran 2x
    slower than everything it replaced), and Dy-ReLU folded into M runtime-weight convs
    (LiteRT's own depthwise kernel is slower than the four elementwise ops it saves).
    """

    def __init__(self, conv: DynamicConv, norm: nn.Module | None, strategy: DynConvStrategy) -> None:
        super().__init__()
        c, k = conv.out_channels, conv.k
        self.channels, self.k, self.kernel_size = c, k, conv.kernel_size
        self.stride, self.padding = conv.stride, conv.padding
        self.strategy = strategy
        bank, bias = _bank_and_bias(conv, norm)  # (K, C, 1, k, k)
        if strategy is DynConvStrategy.RUNTIME_WEIGHT:
            self.bank = nn.Parameter(bank.reshape(k, -1).clone())
            self.bias = None if bias is None else nn.Parameter(bias.clone())
            return
        self.convs = nn.ModuleList()
        for i in range(k):
            m = nn.Conv2d(c, c, conv.kernel_size, conv.stride, conv.padding, groups=c,
                          bias=bias is not None, dtype=bank.dtype)
            with torch.no_grad():
                m.weight.copy_(bank[i])
                if bias is not None:
                    m.bias.copy_(bias)
            self.convs.append(m)

    def forward(self, x: Tensor, att: Tensor, layout: Layout) -> Tensor:
        nhwc = layout is Layout.NHWC
        if self.strategy is DynConvStrategy.RUNTIME_WEIGHT:
            if x.size(0) != 1:
                raise ValueError(f"the runtime_weight depthwise Dy-Conv runs batch 1 only, got "
                                 f"{x.size(0)}; use the static_k strategy for batches")
            w = torch.mm(att, self.bank).reshape(self.channels, 1, self.kernel_size, self.kernel_size)
            xin = x.permute(0, 3, 1, 2) if nhwc else x
            y = F.conv2d(xin, w, self.bias, self.stride, self.padding, groups=self.channels)
            return y.permute(0, 2, 3, 1) if nhwc else y
        a = torch.split(att.reshape(-1, 1, 1, self.k) if nhwc else att.reshape(-1, self.k, 1, 1),
                        1, dim=3 if nhwc else 1)
        run = (lambda m: conv_nhwc(m, x)) if nhwc else (lambda m: m(x))
        y = run(self.convs[0]) * a[0]
        for i in range(1, self.k):
            y = y + run(self.convs[i]) * a[i]
        return y


def _lean_depthwise(conv: DynamicConv, norm: nn.Module | None, strategy: DynConvStrategy) -> LeanDepthwise:
    """The depthwise Dy-Conv in the form ``strategy`` gives a conv of its stride."""
    if conv.groups != conv.out_channels or conv.in_channels != conv.out_channels:
        raise ValueError("the depthwise Dy-Conv must have groups == channels")
    return LeanDepthwise(conv, norm, depthwise_form(strategy, conv.stride))


def patch_block(block: nn.Module, strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                layout: Layout | str = Layout.NCHW) -> nn.Module:
    """Export form of one block: lean dynamic block, or a static block with BN folded."""
    if isinstance(block, DynamicInvertedResidual):
        if DynConvStrategy(strategy) is DynConvStrategy.FUSED:
            if Layout(layout) is not Layout.NCHW:
                raise ValueError("the fused export form is NCHW (ONNX) only")
            return FusedDynamicBlock(block)
        return LeanDynamicBlock(block, strategy=strategy, layout=layout)
    block = copy.deepcopy(block)
    if isinstance(block, InvertedResidual):
        block.block = nn.Sequential(*(fold_conv_norm_act(m) if isinstance(m, nn.Sequential) else m
                                      for m in block.block))
    return NCHWModule(block) if Layout(layout) is Layout.NHWC else block


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

class ExportableTagger(nn.Module):
    """features -> (logits, embedding); the embedding is a plain mean over (F, T)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential,
                 layout: Layout = Layout.NCHW) -> None:
        super().__init__()
        self.features, self.classifier, self.layout = features, classifier, layout

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        embed = self.features(x).mean((1, 2) if self.layout is Layout.NHWC else (2, 3))
        return self.classifier(embed), embed


def _head(classifier: nn.Sequential) -> nn.Sequential:
    """The official head minus its pooling/flatten (and dropout, a no-op in eval)."""
    kept = [copy.deepcopy(m) for m in classifier
            if not isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout))]
    return nn.Sequential(*kept)


_KEPT_ATTRS = ("width", "num_classes", "replace_se", "untrained", "weights_path")

def make_exportable(model: nn.Module, strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                    *, layout: Layout | str = Layout.NCHW) -> nn.Module:
    """A patched copy of a DyMN or MN in eval mode with the same outputs, in export-friendly ops.

    ``forward(mel (B, 1, 128, T)) -> (logits, embedding)`` for any T (and any B unless the
    ``strategy`` runs batch 1 only, see :func:`strategy_supports_dynamic_batch`). ``layout``
    is the layout of the activations between the blocks of a DyMN (MN stays NCHW: its
    static convs convert to NHWC kernels without help). ``model`` is not modified.
    """
    strategy, layout = DynConvStrategy(strategy), Layout(layout)
    src = copy.deepcopy(model).eval()
    if isinstance(src, DyMN):
        stem, blocks, last = src.in_c, list(src.layers), src.out_c
    elif isinstance(src, MN):
        layout = Layout.NCHW
        mods = list(src.features)
        stem, blocks, last = mods[0], mods[1:-1], mods[-1]
    else:
        raise TypeError(f"make_exportable takes a DyMN or MN, got {type(model).__name__}")
    nhwc = layout is Layout.NHWC
    last = fold_conv_norm_act(last)
    stem = fold_conv_norm_act(stem)
    if strategy is DynConvStrategy.FUSED and isinstance(src, DyMN):
        stem = fused_stem(stem)
    features = nn.Sequential(stem, *([ChannelsLast()] if nhwc else []),
                             *(patch_block(b, strategy, layout) for b in blocks),
                             NCHWModule(last) if nhwc else last)
    out = ExportableTagger(features, _head(src.classifier), layout)
    for name in _KEPT_ATTRS:
        if hasattr(model, name):
            setattr(out, name, getattr(model, name))
    out.arch = type(model).__name__
    out.export_strategy = strategy
    out.layout = layout
    return out.eval()
