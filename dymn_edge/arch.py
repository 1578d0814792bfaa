"""The MobileNetV3 architecture as plain data: block table, channel widths, export-form names.

Torch-free on purpose: the PyTorch models (:mod:`dymn_edge.models`), the analytic MAC counter
(:mod:`dymn_edge.benchmarks.macs`) and the exporter's argument checks
(:mod:`dymn_edge.export.config`) all read the architecture from here, so counting MACs or
checking ``--strategy`` never has to import torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "BlockConfig", "MOBILENET_V3_LARGE", "block_configs", "head_channels", "make_divisible",
    "DynConvStrategy", "Layout", "strategy_supports_dynamic_batch", "depthwise_form",
]


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


# --------------------------------------------------------------------------------------------
# Export forms (the patcher implements them; the formats table picks one per format)
# --------------------------------------------------------------------------------------------

class DynConvStrategy(str, enum.Enum):
    """How the depthwise Dy-Conv of a block is written in the export graph (pointwise: matmul).

    All forms are exact; they differ in what an engine runs fast (measured per format in
    ``dymn_edge/formats.py``).
    """

    STATIC_K = "static_k"  # K static depthwise convs weighted by the attention: any batch, fully XNNPACK-delegated in LiteRT
    RUNTIME_WEIGHT = "runtime_weight"  # one conv with the per-sample aggregated weight: batch 1 only
    STRIDE_SPLIT = "stride_split"  # runtime_weight at stride 1, static_k at stride 2 (ONNX Runtime's runtime-weight kernel is slow at stride 2): batch 1 only
    FUSED = "fused"  # runtime-weight depthwise with Dy-ReLU and coordinate attention in one custom op (ONNX for OpenVINO with the dymn-edge extension): any batch


def depthwise_form(strategy: DynConvStrategy | str, stride: int) -> DynConvStrategy:
    """The form (``static_k`` or ``runtime_weight``) one depthwise Dy-Conv of ``stride`` takes."""
    s = DynConvStrategy(strategy)
    if s is DynConvStrategy.FUSED:  # one conv with the mixed kernel, inside DyTail
        return DynConvStrategy.RUNTIME_WEIGHT
    if s is DynConvStrategy.STRIDE_SPLIT:
        return DynConvStrategy.STATIC_K if stride > 1 else DynConvStrategy.RUNTIME_WEIGHT
    return s


def strategy_supports_dynamic_batch(strategy: DynConvStrategy | str) -> bool:
    """Whether a model patched with ``strategy`` runs (and exports) with any batch size."""
    return DynConvStrategy(strategy) in (DynConvStrategy.STATIC_K, DynConvStrategy.FUSED)


class Layout(str, enum.Enum):
    """Memory layout of the activations between blocks in the export graph."""

    NCHW = "nchw"  # ONNX Runtime: Conv is NCHW, so NCHW needs no Transpose around it
    NHWC = "nhwc"  # LiteRT: every kernel is NHWC; a channels-last graph has nothing to re-layout
