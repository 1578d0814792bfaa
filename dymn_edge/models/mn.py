"""MN: the static MobileNetV3 baseline of EfficientAT (mn04_as, mn10_as, ...)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dymn_edge.models.layers import BlockConfig, block_configs, conv_norm_act, head_channels, make_divisible, mlp_head


class SqueezeExcitation(nn.Module):
    """Channel squeeze-and-excitation (mean over F and T, ReLU bottleneck, sigmoid gate)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(F.relu(self.fc1(scale))))
        return x * scale[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's concurrent SE with only the channel dimension (its default config).

    The official module max-aggregates a list of SE branches; with one branch that is the
    branch itself, so the keys (``conc_se_layers.0``) and outputs match.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels, make_divisible(channels // reduction))])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """Expansion 1x1 -> depthwise kxk -> (SE) -> projection 1x1, residual when shapes allow."""

    def __init__(self, cnf: BlockConfig, *, use_se: bool | None = None) -> None:
        super().__init__()
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        use_se = cnf.use_se if use_se is None else use_se
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(conv_norm_act(cnf.input_channels, cnf.expanded_channels, 1, activation=act))
        layers.append(conv_norm_act(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel,
                                    stride=cnf.stride, groups=cnf.expanded_channels, activation=act))
        if use_se:
            layers.append(ConcurrentSE(cnf.expanded_channels))
        layers.append(conv_norm_act(cnf.expanded_channels, cnf.out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cnf.use_res_connect

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


class MN(nn.Module):
    """Static MobileNetV3-Large for audio; ``forward`` returns ``(logits, embedding)``."""

    def __init__(self, width: float = 1.0, num_classes: int = 527, *, dropout: float = 0.2) -> None:
        super().__init__()
        self.width, self.num_classes = width, num_classes
        cnfs = block_configs(width)
        last, out_ch, hidden = head_channels(width)
        self.features = nn.Sequential(
            conv_norm_act(1, cnfs[0].input_channels, 3, stride=2),
            *(InvertedResidual(c) for c in cnfs),
            conv_norm_act(last, out_ch, 1),
        )
        self.classifier = mlp_head(out_ch, hidden, num_classes, dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.features(x)
        embed = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x), embed
