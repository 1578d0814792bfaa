"""Export form of DyMN / MN: a patched deep copy built from ops that ONNX and LiteRT take.

The training-faithful modules (:mod:`dymn_edge.models.dymn`, :mod:`dymn_edge.models.mn`)
load the official checkpoints and compute exactly what EfficientAT computes, including ops
that export badly. :func:`make_exportable` rewrites a deep copy (as timm's
``set_exportable`` / Optimum's ``ModelPatcher`` do) into equivalent forms:

- Dy-Conv attention in 2-D: ``softmax(Linear(v))`` over (B, K) with the temperature folded
  into the Linear, then ``torch.mm`` with the kernel bank (K, N). The official 4-D
  ``(B,1,1,K) @ (1,1,K,N)`` becomes a rank-4 BATCH_MATMUL that TFLite rejects.
- Pointwise Dy-Conv: per-sample weight (B, C_out, C_in) and one ``bmm`` with x as
  (B, C_in, F*T); any batch and time length (the official batch-folded grouped conv cannot
  express a dynamic batch).
- Depthwise Dy-Conv, two strategies (:class:`DynConvStrategy`): K static depthwise convs
  weighted by the attention (any batch; XNNPACK delegates static-filter convs only) or one
  conv with a runtime weight (batch 1; fewest ops, fastest in ONNX Runtime).
- BatchNorm folded into the Dy-Conv kernel banks (exact: the attention sums to 1, so a
  per-channel shift added after the conv equals the shift of every kernel) and into the
  ordinary conv-BN pairs.
- Dy-ReLU in 4-D (two maps and ``torch.maximum``) instead of the 5-D broadcast that
  dominates the as-is ONNX graph; ``2.0 * sigmoid - 1.0`` with float literals (an integer
  literal breaks quantization observers).
- Means instead of adaptive pooling everywhere (the ONNX dynamo exporter turns adaptive
  pooling into a fixed-kernel AveragePool: silently wrong at other lengths), so the graph
  is correct for any time length.
"""

from __future__ import annotations

import copy
import enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymn_edge.models.dymn import (
    ContextFree, ContextGenerator, DyMN, DynamicConv, DynamicInvertedResidual,
    DyReLUB,
)
from dymn_edge.models.mn import MN, InvertedResidual

__all__ = [
    "DEFAULT_STRATEGY", "DynConvStrategy", "make_exportable", "strategy_supports_dynamic_batch",
    "ExportableTagger", "ExportDynamicBlock", "ExportContextGenerator", "ExportDyReLU",
    "PointwiseDyConv", "DepthwiseDyConvStaticK", "DepthwiseDyConvRuntime", "DyConvAttention",
    "patch_dynamic_conv", "patch_dyrelu", "patch_context_generator", "patch_block",
    "fold_conv_bn", "fold_conv_norm_act",
]


class DynConvStrategy(str, enum.Enum):
    """How a depthwise Dy-Conv is written in the export graph (pointwise is always bmm)."""

    STATIC_K = "static_k"  # K static depthwise convs weighted by the attention: any batch, fully XNNPACK-delegated in LiteRT
    RUNTIME_WEIGHT = "runtime_weight"  # one conv with a runtime (per-sample aggregated) weight: batch 1 only, fastest in ONNX Runtime


# Measured per target (findings.md, DyMN-M, batch 1, 1 thread): LiteRT delegates no conv with a
# runtime filter, so STATIC_K keeps one XNNPACK partition; ONNX Runtime runs the single
# runtime-weight conv faster than K convs.
DEFAULT_STRATEGY: dict[str, DynConvStrategy] = {
    "tflite": DynConvStrategy.STATIC_K,
    "onnx": DynConvStrategy.RUNTIME_WEIGHT,
}


def strategy_supports_dynamic_batch(strategy: DynConvStrategy | str) -> bool:
    """Whether a model patched with ``strategy`` runs (and exports) with any batch size."""
    return DynConvStrategy(strategy) is DynConvStrategy.STATIC_K


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
# Dy-Conv
# --------------------------------------------------------------------------------------------

class DyConvAttention(nn.Module):
    """(B, H) context -> (B, K) softmax mixing weights; the temperature is folded into ``fc``."""

    def __init__(self, linear: nn.Linear, temperature: float) -> None:
        super().__init__()
        self.fc = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                            dtype=linear.weight.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(linear.weight.detach().double() / temperature)
            if linear.bias is not None:
                self.fc.bias.copy_(linear.bias.detach().double() / temperature)

    def forward(self, v: Tensor) -> Tensor:
        return torch.softmax(self.fc(v), dim=1)


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


class PointwiseDyConv(nn.Module):
    """1x1 Dy-Conv as attention @ bank -> (B, C_out, C_in) and one bmm over x as (B, C_in, F*T)."""

    def __init__(self, conv: DynamicConv, norm: nn.Module | None = None) -> None:
        super().__init__()
        if conv.kernel_size != 1 or conv.groups != 1 or conv.stride != 1 or conv.padding != 0:
            raise ValueError("PointwiseDyConv needs a 1x1, stride-1, ungrouped Dy-Conv")
        self.in_channels, self.out_channels, self.k = conv.in_channels, conv.out_channels, conv.k
        self.attention = DyConvAttention(conv.residuals[0], conv.temperature)
        bank, bias = _bank_and_bias(conv, norm)
        self.bank = nn.Parameter(bank.reshape(conv.k, -1))  # (K, C_out * C_in)
        self.bias = None if bias is None else nn.Parameter(bias.view(1, -1, 1, 1))

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        w = torch.mm(self.attention(v), self.bank).reshape(-1, self.out_channels, self.in_channels)
        y = torch.bmm(w, x.flatten(2)).unflatten(2, (x.size(2), x.size(3)))
        return y if self.bias is None else y + self.bias


class DepthwiseDyConvStaticK(nn.Module):
    """Depthwise Dy-Conv as sum_k attention[:, k] * conv_k(x): exact by linearity, any batch.

    Every conv has a static filter, which XNNPACK delegates (it does not delegate a depthwise
    conv with a runtime filter). The folded BN shift is the bias of each conv: the attention
    sums to 1, so the weighted sum carries it once.
    """

    def __init__(self, conv: DynamicConv, norm: nn.Module | None = None) -> None:
        super().__init__()
        c = conv.out_channels
        if conv.groups != c or conv.in_channels != c:
            raise ValueError("DepthwiseDyConvStaticK needs a depthwise Dy-Conv (groups == channels)")
        self.channels, self.k = c, conv.k
        self.attention = DyConvAttention(conv.residuals[0], conv.temperature)
        bank, bias = _bank_and_bias(conv, norm)
        self.convs = nn.ModuleList()
        for i in range(conv.k):
            m = nn.Conv2d(c, c, conv.kernel_size, conv.stride, conv.padding, groups=c,
                          bias=bias is not None, dtype=bank.dtype)
            with torch.no_grad():
                m.weight.copy_(bank[i])
                if bias is not None:
                    m.bias.copy_(bias)
            self.convs.append(m)

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        a = self.attention(v).reshape(-1, self.k, 1, 1)
        y = self.convs[0](x) * a[:, 0:1]
        for i in range(1, self.k):
            y = y + self.convs[i](x) * a[:, i:i + 1]
        return y


class DepthwiseDyConvRuntime(nn.Module):
    """Depthwise Dy-Conv as one conv with the aggregated weight (C, 1, k, k): batch 1 only.

    The weight is computed from the attention at run time, so there is one conv per block
    instead of K; a batch would need the batch-folded grouped conv, which cannot be exported
    with a dynamic batch. Raises ``ValueError`` for a batch other than 1.
    """

    def __init__(self, conv: DynamicConv, norm: nn.Module | None = None) -> None:
        super().__init__()
        c = conv.out_channels
        if conv.groups != c or conv.in_channels != c:
            raise ValueError("DepthwiseDyConvRuntime needs a depthwise Dy-Conv (groups == channels)")
        self.channels, self.k, self.kernel_size = c, conv.k, conv.kernel_size
        self.stride, self.padding = conv.stride, conv.padding
        self.attention = DyConvAttention(conv.residuals[0], conv.temperature)
        bank, bias = _bank_and_bias(conv, norm)
        self.bank = nn.Parameter(bank.reshape(conv.k, -1))  # (K, C * k * k)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        if x.size(0) != 1:
            raise ValueError(f"the runtime_weight depthwise Dy-Conv runs batch 1 only, got {x.size(0)}; "
                             "use the static_k strategy for batches")
        w = torch.mm(self.attention(v), self.bank).reshape(
            self.channels, 1, self.kernel_size, self.kernel_size)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, groups=self.channels)


def patch_dynamic_conv(conv: DynamicConv, norm: nn.Module | None = None,
                       strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K) -> nn.Module:
    """Export form of one Dy-Conv (with the BatchNorm that follows it folded in, if given)."""
    if conv.kernel_size == 1 and conv.groups == 1:
        return PointwiseDyConv(conv, norm)
    if DynConvStrategy(strategy) is DynConvStrategy.STATIC_K:
        return DepthwiseDyConvStaticK(conv, norm)
    return DepthwiseDyConvRuntime(conv, norm)


# --------------------------------------------------------------------------------------------
# Dy-ReLU, context, block
# --------------------------------------------------------------------------------------------

class ExportDyReLU(nn.Module):
    """Dy-ReLU-B in 4-D: max over M maps ``x * a_m + b_m`` with (B, C, 1, 1) coefficients.

    The rows of ``coef_net`` are reordered from the official channel-major layout
    (c * 2M + m) to map-major (m * C + c), so the 2M coefficient vectors are contiguous
    chunks (a SPLIT, not strided slices).
    """

    def __init__(self, m: DyReLUB) -> None:
        super().__init__()
        c, mm = m.channels, m.m
        self.channels, self.m = c, mm
        lin = m.coef_net[0]
        # new row (j * C + c) = old row (c * 2M + j)
        order = torch.arange(c * 2 * mm).view(c, 2 * mm).t().reshape(-1)
        self.fc = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None,
                            dtype=lin.weight.dtype)
        with torch.no_grad():
            self.fc.weight.copy_(lin.weight.detach()[order])
            if lin.bias is not None:
                self.fc.bias.copy_(lin.bias.detach()[order])
        self.register_buffer("lambdas", m.lambdas.detach().repeat_interleave(c).clone())
        self.register_buffer("init_v", m.init_v.detach().repeat_interleave(c).clone())

    def forward(self, x: Tensor, v: Tensor) -> Tensor:
        theta = 2.0 * torch.sigmoid(self.fc(v)) - 1.0  # float literals: int ones break observers
        coefs = (theta * self.lambdas + self.init_v).unsqueeze(-1).unsqueeze(-1)  # (B, 2M*C, 1, 1)
        parts = torch.split(coefs, self.channels, dim=1)
        y = x * parts[0] + parts[self.m]
        for j in range(1, self.m):
            y = torch.maximum(y, x * parts[j] + parts[self.m + j])
        return y


def patch_dyrelu(m: DyReLUB) -> ExportDyReLU:
    return ExportDyReLU(m)


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


class ExportContextGenerator(nn.Module):
    """Context from means along time and frequency; returns (vector (B, H), freq, time).

    ``joint_conv``/norm/act are pointwise, so the two sequences go through them separately
    (no concat, permute or split with shape-derived sizes). The vector is the mean over the
    F + T positions of both sequences, computed as the mean of their concatenation so that
    no length is baked in. In a strided block, the average pooling and ``conv_f``/``conv_t``
    are one conv each.
    """

    def __init__(self, cg: ContextGenerator, fold_bn: bool = True) -> None:
        super().__init__()
        if fold_bn:
            self.joint = nn.Sequential(fold_conv_bn(cg.joint_conv, cg.joint_norm),
                                       copy.deepcopy(cg.joint_act))
        else:
            self.joint = nn.Sequential(copy.deepcopy(cg.joint_conv), copy.deepcopy(cg.joint_norm),
                                       copy.deepcopy(cg.joint_act))
        if cg.stride > 1:
            self.conv_f = _pool_conv(cg.conv_f, 2)
            self.conv_t = _pool_conv(cg.conv_t, 3)
        else:
            self.conv_f = copy.deepcopy(cg.conv_f)
            self.conv_t = copy.deepcopy(cg.conv_t)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g_f = self.joint(x.mean(3, keepdim=True))  # (B, H, F, 1)
        g_t = self.joint(x.mean(2, keepdim=True))  # (B, H, 1, T)
        vector = torch.cat([g_f.flatten(2), g_t.flatten(2)], dim=2).mean(2)  # (B, H)
        return vector, self.conv_f(g_f), self.conv_t(g_t)


def patch_context_generator(cg: ContextGenerator, fold_bn: bool = True) -> ExportContextGenerator:
    return ExportContextGenerator(cg, fold_bn)


class ExportDynamicBlock(nn.Module):
    """Dynamic inverted residual from export-form parts; same computation as the original."""

    def __init__(self, block: DynamicInvertedResidual,
                 strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                 fold_bn: bool = True) -> None:
        super().__init__()
        self.use_res_connect = block.use_res_connect
        self.context_gen = ExportContextGenerator(block.context_gen, fold_bn)
        self.has_exp = isinstance(block.exp_conv, DynamicConv)

        def dyconv(conv: DynamicConv, norm: nn.Module) -> tuple[nn.Module, nn.Module]:
            if fold_bn:
                return patch_dynamic_conv(conv, norm, strategy), nn.Identity()
            return patch_dynamic_conv(conv, None, strategy), copy.deepcopy(norm)

        if self.has_exp:
            self.exp_conv, self.exp_norm = dyconv(block.exp_conv, block.exp_norm)
            act = block.exp_act.module if isinstance(block.exp_act, ContextFree) else block.exp_act
            self.exp_act: nn.Module = copy.deepcopy(act)
        else:
            self.exp_conv, self.exp_norm, self.exp_act = nn.Identity(), nn.Identity(), nn.Identity()
        self.depth_conv, self.depth_norm = dyconv(block.depth_conv, block.depth_norm)
        self.depth_act = ExportDyReLU(block.depth_act)
        self.proj_conv, self.proj_norm = dyconv(block.proj_conv, block.proj_norm)

    def forward(self, x: Tensor) -> Tensor:
        v, freq, time = self.context_gen(x)
        y = x
        if self.has_exp:
            y = self.exp_act(self.exp_norm(self.exp_conv(x, v)))
        y = self.depth_act(self.depth_norm(self.depth_conv(y, v)), v)
        y = y * torch.sigmoid(freq) * torch.sigmoid(time)  # coordinate attention
        y = self.proj_norm(self.proj_conv(y, v))
        return y + x if self.use_res_connect else y


def patch_block(block: nn.Module, strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                fold_bn: bool = True) -> nn.Module:
    """Export form of one block (dynamic, or static MN inverted residual)."""
    if isinstance(block, DynamicInvertedResidual):
        return ExportDynamicBlock(block, strategy, fold_bn)
    block = copy.deepcopy(block)
    if fold_bn and isinstance(block, InvertedResidual):
        block.block = nn.Sequential(*(fold_conv_norm_act(m) if isinstance(m, nn.Sequential) else m
                                      for m in block.block))
    return block


# --------------------------------------------------------------------------------------------
# Whole model
# --------------------------------------------------------------------------------------------

class ExportableTagger(nn.Module):
    """features -> (logits, embedding) with the embedding a plain mean over (F, T)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        embed = self.features(x).mean((2, 3))
        return self.classifier(embed), embed


def _head(classifier: nn.Sequential) -> nn.Sequential:
    """The official head minus its pooling/flatten (and dropout, a no-op in eval)."""
    kept = [copy.deepcopy(m) for m in classifier
            if not isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout))]
    return nn.Sequential(*kept)


_KEPT_ATTRS = ("width", "num_classes", "replace_se", "untrained", "weights_path")


def make_exportable(model: nn.Module, strategy: DynConvStrategy | str = DynConvStrategy.STATIC_K,
                    *, fold_bn: bool = True) -> nn.Module:
    """A patched copy of a DyMN or MN in eval mode with the same outputs, in export-friendly ops.

    ``forward(mel (B, 1, 128, T)) -> (logits, embedding)`` for any T (and any B unless
    ``strategy`` is ``runtime_weight``, which runs batch 1 only). ``model`` is not modified.
    """
    strategy = DynConvStrategy(strategy)
    src = copy.deepcopy(model).eval()
    stage = (lambda s: fold_conv_norm_act(s)) if fold_bn else (lambda s: s)
    if isinstance(src, DyMN):
        features = nn.Sequential(stage(src.in_c),
                                 *(patch_block(b, strategy, fold_bn) for b in src.layers),
                                 stage(src.out_c))
    elif isinstance(src, MN):
        mods = list(src.features)
        features = nn.Sequential(stage(mods[0]), *(patch_block(b, strategy, fold_bn) for b in mods[1:-1]),
                                 stage(mods[-1]))
    else:
        raise TypeError(f"make_exportable takes a DyMN or MN, got {type(model).__name__}")
    out = ExportableTagger(features, _head(src.classifier))
    for name in _KEPT_ATTRS:
        if hasattr(model, name):
            setattr(out, name, getattr(model, name))
    out.arch = type(model).__name__
    out.export_strategy = strategy
    out.fold_bn = fold_bn
    return out.eval()
