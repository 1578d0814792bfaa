"""The architecture data and export-form names are torch-free and have one home (dymn_edge.arch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dymn_edge.arch import (
    DynConvStrategy, Layout, block_configs, depthwise_form, head_channels,
    strategy_supports_dynamic_batch,
)


def test_counting_macs_and_checking_export_args_load_no_torch() -> None:
    code = (
        "import sys\n"
        "import dymn_edge.benchmarks.macs as macs, dymn_edge.export.config, dymn_edge.export.formats\n"
        "from dymn_edge.export.config import ExportConfig\n"
        "cx = macs.count_model('dymn-m', frames=1000)\n"
        "print(macs.deployed_macs(cx, 'stride_split'))\n"
        "ExportConfig(model='dymn-s', format='onnx', strategy='stride_split', random_init=True)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0


def test_models_read_the_same_table() -> None:
    pytest.importorskip("torch")
    from dymn_edge.models import layers

    assert layers.block_configs is block_configs and layers.head_channels is head_channels
    cfg = block_configs(1.0)
    assert len(cfg) == 15 and cfg[12].kernel == 5 and cfg[12].stride == 2
    assert head_channels(1.0) == (160, 960, 1280)


def test_strategy_names_one_home() -> None:
    from dymn_edge.export.formats import FORMATS

    assert {f.default_strategy for f in FORMATS.values()} <= set(DynConvStrategy)
    assert {f.layout for f in FORMATS.values()} <= set(Layout)
    assert [depthwise_form("stride_split", s) for s in (1, 2)] == [
        DynConvStrategy.RUNTIME_WEIGHT, DynConvStrategy.STATIC_K]
    assert [strategy_supports_dynamic_batch(s) for s in DynConvStrategy] == [True, False, False, True]
    # the fused operator runs one conv with the mixed kernel: runtime_weight's cost at both strides
    assert [depthwise_form("fused", s) for s in (1, 2)] == [DynConvStrategy.RUNTIME_WEIGHT] * 2
    with pytest.raises(ValueError):
        depthwise_form("nope", 1)


def test_stride_split_macs_sit_between_the_forms() -> None:
    from dymn_edge.benchmarks.macs import count_model, deployed_macs

    cx = count_model("dymn-m", frames=1000)
    rw, ss, sk = (deployed_macs(cx, s) for s in ("runtime_weight", "stride_split", "static_k"))
    assert rw < ss < sk
    assert deployed_macs(cx, None) == rw  # eager aggregates every kernel, as runtime_weight
