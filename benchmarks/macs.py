"""Analytic MACs and parameter counts of DyMN / MN, from the block table (torch-free).

Why analytic: module-hook counters (thop, ptflops' default backend, EfficientAT's own)
only see ``nn.Conv2d``/``nn.Linear`` modules and miss DyMN's functional dynamic convolutions,
reporting 5-10x too few MACs. Counting from :func:`dymn_edge.models.layers.block_configs`
gives every layer, any width, variant and input length, and needs no torch.

Cost model (the paper's, Schmid et al., TASLP 2024): a MAC is one multiply-accumulate of a
convolution or a fully connected layer.

- ``conv`` items: stem, pointwise (expansion / projection) and depthwise convolutions, the
  final ``out_c`` conv; Dy-Conv counted like the static conv it computes per sample.
- ``context`` items: ``joint_conv`` over the F + T pooled positions, ``conv_f`` / ``conv_t``
  over the (strided-pooled) frequency and time sequences.
- ``linear`` items: Dy-Conv attention Linear (H -> K), Dy-ReLU coefficient Linear
  (H -> 2MC), squeeze-and-excitation (MN), classifier head.
- ``aggregation`` items: mixing the K kernels of each Dy-Conv (K x its parameter count).
  The published 0.12 / 0.58 / 2.2 GMACs exclude it; :attr:`Complexity.macs_with_aggregation`
  includes it.
- ``elementwise`` items (coordinate-attention gating, Dy-ReLU's two linear maps, BN, pooling)
  are reported separately for information, never in the MAC totals: they are not MACs of a
  conv or linear layer and the published figures leave them out.

Counts for a 10 s input (T = 1000 frames): DyMN-S/M/L 0.1165 / 0.5765 / 2.2012 GMACs
(0.1174 / 0.5817 / 2.2210 with aggregation); MN-10 0.5362.

Parameters: :attr:`Complexity.params` counts trainable parameters (what
``sum(p.numel() for p in model.parameters())`` gives: 1.961 / 10.548 / 39.966 M);
:attr:`Complexity.params_with_bn_stats` adds BatchNorm running mean and variance, which is
what the paper publishes (1.97 / 10.57 / 40.02 M); :attr:`Complexity.state_dict_numel`
additionally counts ``num_batches_tracked`` and Dy-ReLU's constant buffers (= every element
in the official checkpoint).

Deployed MACs (:func:`deployed_macs`): what an export strategy really computes. With the
``static_k`` depthwise strategy the K static depthwise convolutions are all run and weighted
by the attention, so each dynamic depthwise conv costs K x its MACs (plus nothing for
aggregation); ``runtime_weight`` computes what the model does (aggregation included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dymn_edge.errors import DymnEdgeError
from dymn_edge.arch import (
    BlockConfig, DynConvStrategy, block_configs, depthwise_form, head_channels, make_divisible,
)
from dymn_edge.registry import Arch, get_spec

N_MELS = 128
DYCONV_K = 4
DYRELU_M = 2
SE_REDUCTION = 4

#: Item kinds that make up the model MAC total (paper cost model).
MODEL_KINDS = ("conv", "context", "linear")


def conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output size of a convolution or pooling along one axis."""
    return (n + 2 * padding - kernel) // stride + 1


def context_dim(cnf: BlockConfig, ratio: int = 4, min_size: int = 32, max_size: int = 128) -> int:
    """H = clip(md(C_exp // 4), md(32 w), md(128 w)) (torch-free twin of ``dymn.context_dim``)."""
    lo, hi = make_divisible(min_size * cnf.width), make_divisible(max_size * cnf.width)
    return min(max(make_divisible(cnf.expanded_channels // ratio), lo), hi)


@dataclass
class Item:
    """One layer's cost. ``dynamic`` marks Dy-Conv items (for strategy-dependent costs)."""

    name: str
    kind: str  # conv | context | linear | aggregation | elementwise
    macs: int
    params: int = 0
    bn_channels: int = 0  # BatchNorm after this layer (2 params + 2 running stats each)
    depthwise: bool = False
    dynamic: bool = False
    pooled: bool = False  # conv_f/conv_t after a stride-2 average pool (fused x3 when exported)
    stride: int = 1  # of a conv (the export form of a depthwise Dy-Conv can depend on it)


@dataclass
class BlockCost:
    """Costs of one stage of the network (stem, block i, out conv, head)."""

    name: str
    in_shape: tuple[int, int, int]  # (C, F, T)
    out_shape: tuple[int, int, int]
    dynamic: bool
    items: list[Item] = field(default_factory=list)

    def macs(self, kinds: tuple[str, ...] = MODEL_KINDS) -> int:
        return sum(i.macs for i in self.items if i.kind in kinds)

    @property
    def params(self) -> int:
        return sum(i.params + 2 * i.bn_channels for i in self.items)

    @property
    def bn_channels(self) -> int:
        return sum(i.bn_channels for i in self.items)


@dataclass
class Complexity:
    """Per-block and total cost of one architecture at one input length."""

    arch: str
    width: float
    num_classes: int
    frames: int
    blocks: list[BlockCost]

    def _sum(self, kinds: tuple[str, ...]) -> int:
        return sum(b.macs(kinds) for b in self.blocks)

    @property
    def macs(self) -> int:
        """Model MACs, the paper's cost model (no kernel aggregation, no elementwise ops)."""
        return self._sum(MODEL_KINDS)

    @property
    def macs_with_aggregation(self) -> int:
        return self._sum(MODEL_KINDS + ("aggregation",))

    @property
    def elementwise_ops(self) -> int:
        """Multiplies of gating / Dy-ReLU maps (information only, not in any MAC total)."""
        return self._sum(("elementwise",))

    @property
    def params(self) -> int:
        """Trainable parameters (``model.parameters()``)."""
        return sum(b.params for b in self.blocks)

    @property
    def params_with_bn_stats(self) -> int:
        """Trainable parameters + BatchNorm running mean/var: the paper's published count."""
        return self.params + 2 * sum(b.bn_channels for b in self.blocks)

    @property
    def state_dict_numel(self) -> int:
        """Every element of the official checkpoint (adds num_batches_tracked, Dy-ReLU buffers)."""
        n_bn = sum(1 for b in self.blocks for i in b.items if i.bn_channels)
        n_dyrelu = sum(1 for b in self.blocks for i in b.items if i.name.endswith("depth_act.coef_net"))
        return self.params_with_bn_stats + n_bn + n_dyrelu * 2 * 2 * DYRELU_M

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "width": self.width, "num_classes": self.num_classes,
            "frames": self.frames, "macs": self.macs,
            "macs_with_aggregation": self.macs_with_aggregation,
            "elementwise_ops": self.elementwise_ops, "params": self.params,
            "params_with_bn_stats": self.params_with_bn_stats,
            "state_dict_numel": self.state_dict_numel,
            "blocks": [
                {"name": b.name, "in_shape": list(b.in_shape), "out_shape": list(b.out_shape),
                 "dynamic": b.dynamic, "macs": b.macs(),
                 "macs_with_aggregation": b.macs(MODEL_KINDS + ("aggregation",)),
                 "params": b.params, "items": [asdict(i) for i in b.items]}
                for b in self.blocks
            ],
        }


def _dynamic_block(cnf: BlockConfig, c: int, f: int, t: int) -> tuple[list[Item], int, int]:
    """Items of a DyMN block with input (C, F, T); returns items and output (F', T')."""
    h = context_dim(cnf)
    ce, co, k, s = cnf.expanded_channels, cnf.out_channels, cnf.kernel, cnf.stride
    f2, t2 = conv_out(f, k, s, (k - 1) // 2), conv_out(t, k, s, (k - 1) // 2)
    # Context: joint conv over the F+T pooled positions; conv_f / conv_t after strided pooling.
    fp, tp = (conv_out(f, 3, 2, 1), conv_out(t, 3, 2, 1)) if s > 1 else (f, t)
    items = [
        Item("context_gen.joint_conv", "context", (f + t) * c * h, c * h, bn_channels=h),
        Item("context_gen.conv_f", "context", fp * h * ce, h * ce + ce, pooled=s > 1),
        Item("context_gen.conv_t", "context", tp * h * ce, h * ce + ce, pooled=s > 1),
    ]

    def dyconv(name: str, cin: int, cout: int, ksize: int, groups: int, positions: int,
               stride: int = 1) -> None:
        w = cout * (cin // groups) * ksize * ksize
        items.append(Item(f"{name}.residuals", "linear", h * DYCONV_K, h * DYCONV_K + DYCONV_K))
        items.append(Item(name, "conv", positions * w, DYCONV_K * w, bn_channels=cout,
                          depthwise=groups > 1, dynamic=True, stride=stride))
        items.append(Item(f"{name}.aggregation", "aggregation", DYCONV_K * w,
                          depthwise=groups > 1, dynamic=True, stride=stride))

    if ce != c:
        dyconv("exp_conv", c, ce, 1, 1, f * t)
    dyconv("depth_conv", ce, ce, k, ce, f2 * t2, s)
    items.append(Item("depth_act.coef_net", "linear", h * 2 * DYRELU_M * ce,
                      h * 2 * DYRELU_M * ce + 2 * DYRELU_M * ce))
    items.append(Item("depth_act.apply", "elementwise", f2 * t2 * ce * DYRELU_M))
    items.append(Item("ca.gate", "elementwise", f2 * t2 * ce * 2))
    dyconv("proj_conv", ce, co, 1, 1, f2 * t2)
    return items, f2, t2


def _static_block(cnf: BlockConfig, c: int, f: int, t: int, use_se: bool
                  ) -> tuple[list[Item], int, int]:
    """Items of an MN inverted-residual block with input (C, F, T)."""
    ce, co, k, s = cnf.expanded_channels, cnf.out_channels, cnf.kernel, cnf.stride
    f2, t2 = conv_out(f, k, s, (k - 1) // 2), conv_out(t, k, s, (k - 1) // 2)
    items: list[Item] = []
    if ce != c:
        items.append(Item("exp_conv", "conv", f * t * c * ce, c * ce, bn_channels=ce))
    items.append(Item("depth_conv", "conv", f2 * t2 * ce * k * k, ce * k * k, bn_channels=ce,
                      depthwise=True))
    if use_se:
        sq = make_divisible(ce // SE_REDUCTION)
        items.append(Item("se.fc1", "linear", ce * sq, ce * sq + sq))
        items.append(Item("se.fc2", "linear", sq * ce, sq * ce + ce))
        items.append(Item("se.gate", "elementwise", f2 * t2 * ce))
    items.append(Item("proj_conv", "conv", f2 * t2 * ce * co, ce * co, bn_channels=co))
    return items, f2, t2


def count(arch: str | Arch, width: float, *, frames: int = 1000, num_classes: int = 527,
          n_mels: int = N_MELS) -> Complexity:
    """Per-block costs of ``arch`` (dymn, dymn_replace_se, mn) at ``width`` for ``frames``."""
    try:
        a = Arch(arch)
    except ValueError as exc:
        raise DymnEdgeError(f"unknown architecture '{arch}' (expected "
                            f"{', '.join(x.value for x in Arch)})") from exc
    if frames < 1 or width <= 0:
        raise DymnEdgeError(f"frames must be >= 1 and width > 0 (got {frames}, {width})")
    cnfs = block_configs(width)
    blocks: list[BlockCost] = []
    c0 = cnfs[0].input_channels
    f, t = conv_out(n_mels, 3, 2, 1), conv_out(frames, 3, 2, 1)
    blocks.append(BlockCost("in_c", (1, n_mels, frames), (c0, f, t), False,
                            [Item("in_c.0", "conv", f * t * c0 * 9, c0 * 9, bn_channels=c0)]))
    c = c0
    for i, cnf in enumerate(cnfs):
        dynamic = a is Arch.DYMN or (a is Arch.DYMN_REPLACE_SE and cnf.use_se)
        if dynamic:
            items, f2, t2 = _dynamic_block(cnf, c, f, t)
        else:
            items, f2, t2 = _static_block(cnf, c, f, t, use_se=cnf.use_se and a is Arch.MN)
        for it in items:
            it.name = f"layers.{i}.{it.name}"
        blocks.append(BlockCost(f"layers.{i}", (c, f, t), (cnf.out_channels, f2, t2), dynamic,
                                items))
        c, f, t = cnf.out_channels, f2, t2
    last, out_ch, hidden = head_channels(width)
    blocks.append(BlockCost("out_c", (last, f, t), (out_ch, f, t), False,
                            [Item("out_c.0", "conv", f * t * last * out_ch, last * out_ch,
                                  bn_channels=out_ch)]))
    blocks.append(BlockCost("classifier", (out_ch, 1, 1), (num_classes, 1, 1), False, [
        Item("classifier.2", "linear", out_ch * hidden, out_ch * hidden + hidden),
        Item("classifier.5", "linear", hidden * num_classes, hidden * num_classes + num_classes),
    ]))
    return Complexity(a.value, width, num_classes, frames, blocks)


def count_model(name: str, *, frames: int = 1000, num_classes: int | None = None) -> Complexity:
    """:func:`count` for a registry model name (``dymn-s``, ``mn-m``, ...)."""
    spec = get_spec(name)
    return count(spec.arch, spec.width, frames=frames,
                 num_classes=spec.num_classes if num_classes is None else num_classes)


def deployed_macs(cx: Complexity, strategy: DynConvStrategy | str | None, *,
                  export_form: bool = True) -> int:
    """MACs that an exported graph (or the eager model) really executes.

    ``strategy`` is the depthwise Dy-Conv form (:class:`dymn_edge.arch.DynConvStrategy`),
    resolved per conv by its stride (:func:`dymn_edge.arch.depthwise_form`): a ``static_k``
    conv runs K static depthwise convs (K x depthwise MACs, no depthwise kernel aggregation);
    ``runtime_weight`` (and ``None`` = PyTorch eager) aggregates every kernel (model MACs +
    aggregation). ``export_form`` adds the patcher's rewrite of a strided block's average
    pool + ``conv_f``/``conv_t`` into one kernel-3 stride-2 conv (3x those MACs); the eager
    official model pools first (``export_form=False``).
    """
    def static_k(it: Item) -> bool:
        return (strategy is not None and it.dynamic and it.depthwise
                and depthwise_form(strategy, it.stride) is DynConvStrategy.STATIC_K)

    total = 0
    for b in cx.blocks:
        for it in b.items:
            if it.kind in MODEL_KINDS:
                mult = DYCONV_K if static_k(it) else 1
                if export_form and it.pooled:
                    mult *= 3
                total += it.macs * mult
            elif it.kind == "aggregation" and not static_k(it):
                total += it.macs
    return total


def table(cx: Complexity) -> str:
    """Per-block text table (MMAC), for ``dymn-bench --macs`` and logs."""
    rows = [f"{'block':<12}{'in (C,F,T)':>18}{'MMAC':>10}{'+agg':>10}{'params k':>10}"]
    for b in cx.blocks:
        rows.append(f"{b.name:<12}{str(b.in_shape):>18}{b.macs() / 1e6:>10.2f}"
                    f"{b.macs(MODEL_KINDS + ('aggregation',)) / 1e6:>10.2f}{b.params / 1e3:>10.1f}")
    rows.append(f"{'total':<12}{'':>18}{cx.macs / 1e6:>10.2f}"
                f"{cx.macs_with_aggregation / 1e6:>10.2f}{cx.params / 1e3:>10.1f}")
    return "\n".join(rows)
