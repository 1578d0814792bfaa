"""PyTorch building blocks shared by DyMN and MN (conv-BN-act, head); the block table is in arch."""

from __future__ import annotations

from functools import partial

from torch import nn

from dymn_edge.arch import (  # the block table is torch-free data; re-exported for the models
    MOBILENET_V3_LARGE, BlockConfig, block_configs, head_channels, make_divisible,
)

# BatchNorm of the official checkpoints (eps matters for parity; momentum only for training).
BatchNorm2d = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)

__all__ = ["BatchNorm2d", "MOBILENET_V3_LARGE", "BlockConfig", "block_configs", "head_channels",
           "make_divisible", "conv_norm_act", "mlp_head"]


def conv_norm_act(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
    activation: type[nn.Module] | None = nn.Hardswish,
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> activation, keyed 0/1/2 as torchvision's block."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        BatchNorm2d(out_ch),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


def mlp_head(in_ch: int, hidden: int, num_classes: int, dropout: float = 0.2) -> nn.Sequential:
    """Pool -> Flatten -> Linear -> Hardswish -> Dropout -> Linear (indices 2 and 5 hold weights)."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(start_dim=1),
        nn.Linear(in_ch, hidden),
        nn.Hardswish(),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )
