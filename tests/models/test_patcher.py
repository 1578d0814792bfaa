"""The export form (patcher) computes what the training-faithful modules compute.

Random-init models give near-constant, tiny outputs, which would hide mistakes; the models
here get random BatchNorm affines and statistics calibrated on random input ("lively"), so
every activation is O(1) and depends on the input.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dymn_edge.models.dymn import DyMN, DynamicConv, DynamicInvertedResidual
from dymn_edge.models.factory import create_model
from dymn_edge.arch import depthwise_form
from dymn_edge.models.patcher import (
    DynConvStrategy, FusedDynamicBlock, FusedStem, Layout, LeanDepthwise, LeanDynamicBlock, make_exportable, patch_block,
    fused_stem, strategy_supports_dynamic_batch,
)

STRATEGIES = list(DynConvStrategy)
LAYOUTS = list(Layout)
SK, RW = DynConvStrategy.STATIC_K, DynConvStrategy.RUNTIME_WEIGHT
SS = DynConvStrategy.STRIDE_SPLIT
FU = DynConvStrategy.FUSED
#: (strategy, layout) pairs the patcher takes: the fused form is NCHW (ONNX) only
PAIRS = [(s, lay) for s in STRATEGIES for lay in LAYOUTS if not (s is FU and lay is Layout.NHWC)]
FORMS = [SK, RW]  # the per-conv forms; stride_split composes them (whole-model tests cover it)
BATCH_1_ONLY = [s for s in STRATEGIES if not strategy_supports_dynamic_batch(s)]
GOLDEN = "reference/golden_dymn04.pt"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _liven_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(0.7 + 0.6 * torch.rand(n, generator=g))
        bn.bias.copy_(0.2 * torch.randn(n, generator=g))
        bn.running_mean.copy_(0.3 * torch.randn(n, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _lively(model: nn.Module, seed: int = 0, t: int = 120) -> nn.Module:
    """Random BN affines; BN statistics set, in forward order, from the eval-mode input they see.

    Like statistics taken from real audio: every BN normalizes what actually reaches it, so
    activations stay O(1) through the 15 blocks and outputs depend on the input.
    """
    g = _gen(seed)
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        _liven_bn(bn, g)
    seen: set[nn.Module] = set()

    def calibrate(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if bn not in seen:
            bn.running_mean.copy_(args[0].mean((0, 2, 3)))
            bn.running_var.copy_(4.0 * args[0].var((0, 2, 3)) + 1e-2)
            seen.add(bn)

    handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    with torch.no_grad():
        model(torch.randn(4, 1, 128, t, generator=g))
    for h in handles:
        h.remove()
    assert len(seen) == len(bns)
    return model


def _mel(batch: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 128, t, generator=_gen(seed))


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _assert_equivalent(model: nn.Module, x: torch.Tensor, strategy: DynConvStrategy | str,
                       layout: Layout | str = Layout.NCHW) -> None:
    """Patched == original: exactly in float64 (up to 101 frames), within 1e-4 relative in float32.

    float64 separates a wrong rewrite from rounding: a fixed float32 tolerance is either loose
    for small outputs or below the original's own rounding noise, which the 15 blocks of a
    lively model amplify (its float32-vs-float64 error is ~5e-5 relative).
    """
    x64 = x[:1, ..., :101].double()
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        ref64 = m64(x64)
        p64 = make_exportable(m64, strategy, layout=layout)(x64)
        ref32 = model(x)
        p32 = make_exportable(model, strategy, layout=layout)(x)
    for name, r64, q64, r32, q32 in zip(("logits", "embedding"), ref64, p64, ref32, p32):
        assert float(r32.std()) > 1e-2, name  # lively: not a constant output
        assert _maxdiff(q64, r64) < 1e-10 * max(1.0, float(r64.abs().max())), name
        assert _maxdiff(q32, r32) < 1e-4 * max(1.0, float(r32.abs().max())), name


@pytest.fixture(scope="module")
def dymn_s() -> nn.Module:
    return _lively(create_model("dymn-s", pretrained=False))


@pytest.fixture(scope="module")
def golden_model() -> nn.Module:
    from conftest import require_file

    return create_model("dymn-s", weights=require_file(GOLDEN))


# --------------------------------------------------------------------------------------------
# strategy API
# --------------------------------------------------------------------------------------------

def test_strategy_api() -> None:
    assert DynConvStrategy("static_k") is SK and DynConvStrategy("runtime_weight") is RW
    assert strategy_supports_dynamic_batch(SK) and strategy_supports_dynamic_batch("static_k")
    assert BATCH_1_ONLY == [RW, SS]
    assert [depthwise_form(SS, st) for st in (1, 2)] == [RW, SK]
    assert all(depthwise_form(f, st) is f for f in FORMS for st in (1, 2))
    from dymn_edge.export.formats import FORMATS  # the one place the per-format defaults live

    assert all(DynConvStrategy(f.default_strategy) and Layout(f.layout) for f in FORMATS.values())
    with pytest.raises(ValueError):
        DynConvStrategy("nope")
    with pytest.raises(ValueError):
        Layout("nope")
    with pytest.raises(TypeError):
        make_exportable(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------
# single blocks
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("strategy", FORMS)
def test_every_block_float64(dymn_s: nn.Module, strategy: DynConvStrategy, layout: Layout) -> None:
    """Each of the 15 blocks of a lively DyMN-S, on its real input, exact in float64.

    Covers every block shape: no expansion (block 1), stride 2 with 3x3 and 5x5 kernels
    (fused pooling in the coordinate convs), residual and not, ReLU and hard-swish.
    """
    m64 = copy.deepcopy(dymn_s).double()
    x = _mel(1, 61).double()
    with torch.no_grad():
        h = m64.in_c(x)
        for i, block in enumerate(m64.layers):
            ref = block(h)
            lean = patch_block(block, strategy, layout)
            assert isinstance(lean, LeanDynamicBlock)
            out = lean(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if layout is Layout.NHWC else lean(h)
            assert out.shape == ref.shape, f"block {i}"
            assert _maxdiff(out, ref) < 1e-12 * max(1.0, float(ref.abs().max())), f"block {i}"
            h = ref


def test_every_block_float64_fused(dymn_s: nn.Module) -> None:
    """The fused form of each of the 15 blocks (MixBanks + DyTail references), batch 2, float64.

    The PyTorch bodies of the two operators are their definitions (the C++ kernels are tested
    against the same formulas), so this is the exactness of the form itself.
    """
    m64 = copy.deepcopy(dymn_s).double()
    x = torch.cat([_mel(1, 61), _mel(1, 61, seed=5)]).double()
    acts = set()
    with torch.no_grad():
        h = m64.in_c(x)
        for i, block in enumerate(m64.layers):
            ref = block(h)
            fused = patch_block(block, FU)
            assert isinstance(fused, FusedDynamicBlock)
            acts.add((fused.tail_act, fused.exp_in_tail))
            out = fused(h)
            assert out.shape == ref.shape, f"block {i}"
            assert _maxdiff(out, ref) < 1e-12 * max(1.0, float(ref.abs().max())), f"block {i}"
            h = ref
    # no expansion (block 1), ReLU and hard-swish blocks, the expansion inside the tail and not
    assert {a for a, _ in acts} == {0, 1, 2} and {e for _, e in acts} == {True, False}


def test_fused_stem_float64(dymn_s: nn.Module) -> None:
    """The fused form's stem (the Stem operator, BN folded) is the official conv-BN-hardswish in
    float64; a stem the operator does not take stays the stock conv."""
    m64 = copy.deepcopy(dymn_s).double()
    x = torch.cat([_mel(1, 61), _mel(1, 61, seed=5)]).double()
    exportable = make_exportable(m64, FU)
    stem = exportable.features[0]
    assert isinstance(stem, FusedStem) and (stem.stride, stem.pad, stem.act) == (2, 1, 2)
    with torch.no_grad():
        ref, out = m64.in_c(x), stem(x)
    assert out.shape == ref.shape and _maxdiff(out, ref) < 1e-12 * max(1.0, float(ref.abs().max()))
    two_channel = nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1), nn.Hardswish())
    assert fused_stem(two_channel) is two_channel
    assert not any(isinstance(m, FusedStem) for m in make_exportable(m64, SK).modules())


def test_fused_ops_reject_bad_act() -> None:
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="act"):
        torch.ops.dymn_edge.dy_tail(x, torch.zeros(2), torch.ones(1, 1), torch.ones(1, 2, 3, 3),
                                    torch.zeros(2), torch.ones(1, 4), torch.zeros(1, 2, 5, 1),
                                    torch.zeros(1, 2, 1, 5), 1, 1, 7, 2)


@pytest.mark.parametrize("strategy", FORMS)
def test_block_batches_and_temperature(strategy: DynConvStrategy) -> None:
    """Batches where the strategy allows them (one clear error where not); T=30 is folded in."""
    model = _lively(create_model("dymn-s", pretrained=False, temperature=30.0))
    block = model.layers[4]  # 5x5, stride 1, residual
    h = torch.randn(3, block.context_gen.joint_conv.in_channels, 16, 25, generator=_gen(8))
    lean = patch_block(block, strategy)
    with torch.no_grad():
        ref = block(h)
        if strategy in BATCH_1_ONLY:
            with pytest.raises(ValueError, match="batch 1"):
                lean(h)
            h, ref = h[:1], ref[:1]
        out = lean(h)
        t1 = copy.deepcopy(block)
        for m in t1.modules():
            if isinstance(m, DynamicConv):
                m.temperature = 1.0
        assert _maxdiff(t1(h), ref) > 1e-3  # the temperature matters for these weights
    assert _maxdiff(out, ref) < 1e-5 * max(1.0, float(ref.abs().max()))


# --------------------------------------------------------------------------------------------
# whole models
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy,layout", PAIRS)
def test_dymn_s_whole(dymn_s: nn.Module, strategy: DynConvStrategy, layout: Layout) -> None:
    _assert_equivalent(dymn_s, _mel(1, 100), strategy, layout)


@pytest.mark.parametrize("strategy,layout", [(RW, Layout.NHWC), (SS, Layout.NCHW), (SK, Layout.NHWC)])
def test_dymn_s_whole_odd_length(dymn_s: nn.Module, strategy: DynConvStrategy, layout: Layout) -> None:
    """A length that is no multiple of the network's stride (the formats' default forms)."""
    _assert_equivalent(dymn_s, _mel(1, 317), strategy, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dymn_s_batch(dymn_s: nn.Module, layout: Layout) -> None:
    x = _mel(3, 90)
    for strategy in STRATEGIES:
        if (strategy, layout) not in PAIRS:
            with pytest.raises(ValueError, match="NCHW"):
                make_exportable(dymn_s, strategy, layout=layout)
        elif strategy in BATCH_1_ONLY:
            with pytest.raises(ValueError, match="batch 1"):
                make_exportable(dymn_s, strategy, layout=layout)(x)
        else:
            _assert_equivalent(dymn_s, x, strategy, layout)


@pytest.mark.parametrize("t", [100, 317])
def test_mn_s_whole(t: int) -> None:
    mn = _lively(create_model("mn-s", pretrained=False))
    for strategy in STRATEGIES:
        patched = make_exportable(mn, strategy)
        assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.BatchNorm2d)) for m in patched.modules())
        _assert_equivalent(mn, _mel(2, t), strategy)


@pytest.mark.parametrize("width,replace_se", [(1.0, False), (0.4, True)])
def test_other_dymn_variants(width: float, replace_se: bool) -> None:
    torch.manual_seed(0)
    model = _lively(DyMN(width, 50, replace_se=replace_se), t=40)
    forms = [(s, lay) for s in FORMS for lay in LAYOUTS] if width < 1.0 else [
        (RW, Layout.NHWC)]  # every form on the small one; float64 DyMN-M is slow
    for strategy, layout in forms:
        _assert_equivalent(model, _mel(1, 53), strategy, layout)


def test_temperature_30_model() -> None:
    model = _lively(create_model("dymn-s", pretrained=False, temperature=30.0))
    x = _mel(1, 100)
    _assert_equivalent(model, x, SK)
    _assert_equivalent(model, x, RW, Layout.NHWC)
    t1 = copy.deepcopy(model)
    t1.set_temperature(1.0)
    with torch.no_grad():
        assert _maxdiff(make_exportable(model, SK)(x)[0], make_exportable(t1, SK)(x)[0]) > 1e-3


def test_stride_split_takes_static_k_at_stride_2(dymn_s: nn.Module) -> None:
    patched = make_exportable(dymn_s, SS)
    forms = {m.stride if isinstance(m.stride, int) else m.stride[0]: m.strategy
             for m in patched.modules() if isinstance(m, LeanDepthwise)}
    assert forms == {1: RW, 2: SK}


def test_original_untouched_and_attributes(dymn_s: nn.Module) -> None:
    before = {k: v.clone() for k, v in dymn_s.state_dict().items()}
    types = [type(m) for m in dymn_s.modules()]
    dymn_s.weights_path = None
    patched = make_exportable(dymn_s, "runtime_weight")
    after = dymn_s.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in dymn_s.modules()] == types
    assert any(isinstance(m, DynamicInvertedResidual) for m in dymn_s.modules())
    assert not patched.training
    assert patched.untrained is True and patched.weights_path is None
    assert patched.export_strategy is RW
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.BatchNorm2d, DynamicConv))
                   for m in patched.modules())


# --------------------------------------------------------------------------------------------
# golden state dict and torch.export
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy,layout", PAIRS)
def test_golden(golden_model: nn.Module, golden_io: dict, strategy: DynConvStrategy,
                layout: Layout) -> None:
    patched = make_exportable(golden_model, strategy, layout=layout)
    assert patched.weights_path == golden_model.weights_path and patched.untrained is False
    batch = strategy_supports_dynamic_batch(strategy)
    cases = [("10s", 1e-4), ("1s", 1e-4)] + ([("batch2", 1e-3)] if batch else [])
    for case, tol in cases:
        x = torch.from_numpy(golden_io[f"mel_{case}"])[:, None]
        with torch.no_grad():
            lo, em = patched(x)
        assert np.abs(lo.numpy() - golden_io[f"logits_{case}"]).max() < tol, case
        assert np.abs(em.numpy() - golden_io[f"embed_{case}"]).max() < tol, case


def test_torch_export_dynamic_time(golden_model: nn.Module, golden_io: dict) -> None:
    """Exported once at T=200 (dynamic batch and time), correct at other lengths and batches.

    ``Dim.DYNAMIC``: torch's solver cannot prove its own size guards on the floor-divided
    lengths (final time length != 1), so a strict ``Dim`` range fails; the program asserts
    T >= 33 at run time.
    """
    from torch.export import Dim

    patched = make_exportable(golden_model, SK)
    mel = torch.from_numpy(golden_io["mel_10s"])[:, None]
    ep = torch.export.export(patched, (torch.cat([mel[..., :200], mel[..., 300:500]]),),
                             dynamic_shapes={"x": {0: Dim.DYNAMIC, 3: Dim.DYNAMIC}})
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("adaptive" in o or "batch_norm" in o for o in ops), ops
    assert "aten.bmm.default" in ops and "aten.mm.default" in ops
    for n in ep.graph.nodes:  # no 4-D batch matmul (TFLite rejects it)
        if n.target in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default):
            assert all(len(a.meta["val"].shape) <= 3 for a in n.args if hasattr(a, "meta"))
    run = ep.module()
    for x in (mel[..., :100], torch.cat([mel[..., :317], mel[..., 400:717], mel[..., 683:]])):
        with torch.no_grad():
            (lo, em), (elo, eem) = golden_model(x), run(x)
        assert _maxdiff(elo, lo) < 1e-4 and _maxdiff(eem, em) < 1e-4
