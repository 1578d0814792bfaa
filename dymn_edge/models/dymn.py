"""DyMN (Schmid, Koutini, Widmer, TASLP 2024), written to load EfficientAT checkpoints as-is.

This is the training-faithful form: it computes exactly what the official code computes,
including the ops that do not export well (adaptive pooling, batch-folded grouped
convolution, 5-D Dy-ReLU broadcast). Export-time rewrites live in
:mod:`dymn_edge.models.patcher` and are applied to a copy, never here.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymn_edge.models.layers import (
    BatchNorm2d, BlockConfig, block_configs, conv_norm_act, head_channels, make_divisible, mlp_head,
)
from dymn_edge.models.mn import InvertedResidual  # static blocks of the replace_se variant

TRAINING_TEMPERATURE = 30.0  # start of the official temperature schedule
INFERENCE_TEMPERATURE = 1.0  # what AudioSet-pretrained checkpoints run with


class Context(NamedTuple):
    """Output of the context generation module, shared by all dynamic parts of a block."""

    vector: Tensor  # (B, H, 1, 1): drives Dy-Conv attention and Dy-ReLU coefficients
    freq: Tensor  # (B, C_exp, F', 1): coordinate-attention logits along frequency
    time: Tensor  # (B, C_exp, 1, T'): coordinate-attention logits along time


class ContextGenerator(nn.Module):
    """Pools the block input along time and frequency and maps both sequences (Sec. III-A)."""

    def __init__(self, context_dim: int, in_ch: int, exp_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_ch, context_dim, 1, bias=False)
        self.joint_norm = BatchNorm2d(context_dim)
        self.joint_act = nn.Hardswish()
        self.conv_f = nn.Conv2d(context_dim, exp_ch, 1, bias=True)
        self.conv_t = nn.Conv2d(context_dim, exp_ch, 1, bias=True)
        self.stride = stride
        if stride > 1:
            self.pool_f: nn.Module = nn.AvgPool2d((3, 1), (2, 1), (1, 0))
            self.pool_t: nn.Module = nn.AvgPool2d((1, 3), (1, 2), (0, 1))
        else:
            self.pool_f = nn.Identity()
            self.pool_t = nn.Identity()

    def forward(self, x: Tensor) -> Context:
        cf = F.adaptive_avg_pool2d(x, (None, 1))  # (B, C, F, 1)
        ct = F.adaptive_avg_pool2d(x, (1, None)).permute(0, 1, 3, 2)  # (B, C, T, 1)
        f, t = cf.size(2), ct.size(2)
        g = self.joint_act(self.joint_norm(self.joint_conv(torch.cat([cf, ct], dim=2))))
        h_f, h_t = torch.split(g, [f, t], dim=2)
        h_t = h_t.permute(0, 1, 3, 2)
        vector = g.mean(dim=2, keepdim=True)
        return Context(vector, self.conv_f(self.pool_f(h_f)), self.conv_t(self.pool_t(h_t)))


class DynamicConv(nn.Module):
    """Dy-Conv: K kernels mixed per sample by softmax(Linear(context) / temperature)."""

    def __init__(
        self, in_ch: int, out_ch: int, context_dim: int, kernel_size: int, *, stride: int = 1,
        padding: int = 0, groups: int = 1, k: int = 4, temperature: float = INFERENCE_TEMPERATURE,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.kernel_size, self.stride, self.padding, self.groups, self.k = (
            kernel_size, stride, padding, groups, k)
        self.temperature = float(temperature)
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        fan = out_ch * (in_ch // groups) * kernel_size * kernel_size
        bank = torch.empty(k, out_ch, in_ch // groups, kernel_size, kernel_size)
        for i in range(k):
            nn.init.kaiming_normal_(bank[i], mode="fan_out")
        self.weight = nn.Parameter(bank.reshape(1, 1, k, fan))

    def attention(self, ctx: Context) -> Tensor:
        """(B, 1, 1, K) mixing weights, as the official code shapes them."""
        b = ctx.vector.size(0)
        logits = self.residuals(ctx.vector.view(b, -1)).view(b, 1, 1, -1)
        return F.softmax(logits / self.temperature, dim=-1)

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        b, _, f, t = x.size()
        weight = (self.attention(ctx) @ self.weight).transpose(1, 2).reshape(
            b * self.out_channels, self.in_channels // self.groups, self.kernel_size,
            self.kernel_size)
        out = F.conv2d(x.reshape(1, -1, f, t), weight, None, self.stride, self.padding,
                       groups=self.groups * b)
        return out.view(b, self.out_channels, out.size(-2), out.size(-1))


class DyReLUB(nn.Module):
    """Dy-ReLU-B: per-channel max of M context-dependent linear maps."""

    def __init__(self, channels: int, context_dim: int, m: int = 2) -> None:
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def coefficients(self, ctx: Context) -> Tensor:
        """(B, C, 1, 1, 2M): slopes then intercepts per channel."""
        b = ctx.vector.size(0)
        theta = 2 * torch.sigmoid(self.coef_net(ctx.vector.view(b, -1))) - 1
        return theta.view(-1, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        coefs = self.coefficients(ctx)
        mapped = x.unsqueeze(-1) * coefs[..., : self.m] + coefs[..., self.m :]
        return mapped.max(dim=-1)[0]


class CoordinateAttention(nn.Module):
    """x * sigmoid(freq logits) * sigmoid(time logits)."""

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        return x * ctx.freq.sigmoid() * ctx.time.sigmoid()


class ContextIdentity(nn.Module):
    """Placeholder for a missing expansion (keeps the (x, ctx) call uniform)."""

    def forward(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        return x


class ContextFree(nn.Module):
    """Wraps a static activation so it accepts (and ignores) the context."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor, ctx: Context | None = None) -> Tensor:
        return self.module(x)


def context_dim(cnf: BlockConfig, ratio: int = 4, min_size: int = 32, max_size: int = 128) -> int:
    """H = clip(md(C_exp // 4), md(32 w), md(128 w))."""
    return int(np.clip(make_divisible(cnf.expanded_channels // ratio),
                       make_divisible(min_size * cnf.width), make_divisible(max_size * cnf.width)))


class DynamicInvertedResidual(nn.Module):
    """Inverted residual with Dy-Conv, Dy-ReLU and coordinate attention from one context."""

    def __init__(self, cnf: BlockConfig, *, dyconv_k: int = 4, dyrelu_m: int = 2,
                 temperature: float = INFERENCE_TEMPERATURE) -> None:
        super().__init__()
        h = context_dim(cnf)
        self.context_dim = h
        self.use_res_connect = cnf.use_res_connect
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        if cnf.expanded_channels != cnf.input_channels:
            self.exp_conv: nn.Module = DynamicConv(
                cnf.input_channels, cnf.expanded_channels, h, 1, k=dyconv_k, temperature=temperature)
            self.exp_norm: nn.Module = BatchNorm2d(cnf.expanded_channels)
            self.exp_act: nn.Module = ContextFree(act())
        else:
            self.exp_conv = ContextIdentity()
            self.exp_norm = nn.Identity()
            self.exp_act = ContextIdentity()
        self.depth_conv = DynamicConv(
            cnf.expanded_channels, cnf.expanded_channels, h, cnf.kernel, stride=cnf.stride,
            padding=(cnf.kernel - 1) // 2, groups=cnf.expanded_channels, k=dyconv_k,
            temperature=temperature)
        self.depth_norm = BatchNorm2d(cnf.expanded_channels)
        self.depth_act = DyReLUB(cnf.expanded_channels, h, m=dyrelu_m)
        self.ca = CoordinateAttention()
        self.proj_conv = DynamicConv(cnf.expanded_channels, cnf.out_channels, h, 1, k=dyconv_k,
                                     temperature=temperature)
        self.proj_norm = BatchNorm2d(cnf.out_channels)
        self.context_gen = ContextGenerator(h, cnf.input_channels, cnf.expanded_channels,
                                            stride=cnf.stride)

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.context_gen(x)
        y = self.exp_act(self.exp_norm(self.exp_conv(x, ctx)), ctx)
        y = self.depth_act(self.depth_norm(self.depth_conv(y, ctx)), ctx)
        y = self.ca(y, ctx)
        y = self.proj_norm(self.proj_conv(y, ctx))
        return y + x if self.use_res_connect else y


class DyMN(nn.Module):
    """Dynamic MobileNet: stem, 15 (dynamic) inverted residual blocks, out conv, MLP head.

    ``forward`` takes a log-mel batch (B, 1, 128, T) and returns ``(logits, embedding)``
    with shapes (B, classes) and (B, 6 * last channels).
    """

    def __init__(self, width: float = 1.0, num_classes: int = 527, *, replace_se: bool = False,
                 temperature: float = INFERENCE_TEMPERATURE, dropout: float = 0.2) -> None:
        super().__init__()
        self.width, self.num_classes, self.replace_se = width, num_classes, replace_se
        cnfs = block_configs(width)
        self.in_c = conv_norm_act(1, cnfs[0].input_channels, 3, stride=2)
        self.layers = nn.ModuleList(
            DynamicInvertedResidual(c, temperature=temperature) if (c.use_se or not replace_se)
            else InvertedResidual(c, use_se=False)
            for c in cnfs
        )
        last, out_ch, hidden = head_channels(width)
        self.out_c = conv_norm_act(last, out_ch, 1)
        self.classifier = mlp_head(out_ch, hidden, num_classes, dropout)

    def set_temperature(self, temperature: float) -> None:
        """Dy-Conv softmax temperature of every block (1 for pretrained checkpoints)."""
        for m in self.modules():
            if isinstance(m, DynamicConv):
                m.temperature = float(temperature)

    def features(self, x: Tensor) -> Tensor:
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.features(x)
        embed = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x), embed
