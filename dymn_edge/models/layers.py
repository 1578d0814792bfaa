"""Building blocks shared by DyMN and MN: channel rounding, block table, conv-BN-act."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

# BatchNorm of the official checkpoints (eps matters for parity; momentum only for training).
BatchNorm2d = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet channel rounding: nearest multiple of ``divisor``, never >10% below ``v``."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block of MobileNetV3-Large, already scaled by width."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int
    width: float

    @property
    def use_res_connect(self) -> bool:
        return self.stride == 1 and self.input_channels == self.out_channels


# (in, kernel, expanded, out, SE, activation, stride): MobileNetV3-Large, width 1.
MOBILENET_V3_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)


def block_configs(width: float) -> list[BlockConfig]:
    """The 15 blocks with channels rounded for ``width``."""
    return [
        BlockConfig(
            make_divisible(i * width), k, make_divisible(e * width), make_divisible(o * width),
            se, act == "HS", s, width,
        )
        for (i, k, e, o, se, act, s) in MOBILENET_V3_LARGE
    ]


def head_channels(width: float) -> tuple[int, int, int]:
    """(last block channels, out_c channels = 6x, hidden width of the MLP head)."""
    last = make_divisible(160 * width)
    return last, 6 * last, make_divisible(1280 * width)


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
