"""Analytic MACs and parameters against the published figures and the official layouts."""

from __future__ import annotations

import json
import math

import pytest

from dymn_edge.benchmarks.macs import count, count_model, deployed_macs
from dymn_edge.registry import get_spec

# findings.md: a careful count at 10 s (1000 frames), GMAC without / with kernel aggregation
EXACT = {"dymn-s": (0.1165, 0.1174), "dymn-m": (0.5765, 0.5817), "dymn-l": (2.2012, 2.2210)}
# trainable / with BatchNorm running statistics (the published figures), millions
PARAMS = {"dymn-s": (1.961, 1.972), "dymn-m": (10.548, 10.575), "dymn-l": (39.966, 40.019)}


@pytest.mark.parametrize("name", ["dymn-s", "dymn-m", "dymn-l", "mn-m"])
def test_published_gmacs_within_3_percent(name: str) -> None:
    spec = get_spec(name)
    gmac = count_model(name, frames=1000).macs / 1e9
    assert gmac == pytest.approx(spec.published_gmacs, rel=0.03)


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_analytic_values(name: str) -> None:
    cx = count_model(name, frames=1000)
    assert round(cx.macs / 1e9, 4) == EXACT[name][0]
    assert round(cx.macs_with_aggregation / 1e9, 4) == EXACT[name][1]
    assert round(cx.params / 1e6, 3) == PARAMS[name][0]
    assert round(cx.params_with_bn_stats / 1e6, 3) == PARAMS[name][1]
    assert round(cx.params_with_bn_stats / 1e6, 2) == get_spec(name).published_params_m


def test_mn10_is_054() -> None:
    assert round(count_model("mn-m", frames=1000).macs / 1e9, 2) == 0.54


@pytest.mark.parametrize("key,name", [("dymn04_as", "dymn-s"), ("dymn10_as", "dymn-m"),
                                      ("dymn20_as", "dymn-l"), ("mn04_as", "mn-s"),
                                      ("mn10_as", "mn-m")])
def test_params_match_official_state_dicts(reference_dir, key: str, name: str) -> None:
    layouts = json.loads((reference_dir / "efficientat_state_dict_layouts.json").read_text())
    entry = layouts[key]
    cx = count_model(name)
    assert cx.params == entry["params"]
    assert cx.state_dict_numel == sum(math.prod(s) for s in entry["state_dict"].values())


def test_scaling_variants_and_deployed_forms() -> None:
    s1, s10 = count("dymn", 0.4, frames=100), count("dymn", 0.4, frames=1000)
    assert 0.1 < s1.macs / s10.macs < 0.13  # roughly linear in length (+ fixed head cost)
    assert len(s10.blocks) == 15 + 3 and s10.blocks[1].name == "layers.0"
    rse = count("dymn_replace_se", 1.0, frames=1000)
    mn = count("mn", 1.0, frames=1000)
    assert mn.macs < rse.macs < count("dymn", 1.0, frames=1000).macs
    assert sum(b.dynamic for b in rse.blocks) == 8  # blocks with SE in MobileNetV3-Large
    # static_k runs K depthwise convs; runtime_weight is the model plus kernel aggregation
    dw = sum(i.macs for b in s10.blocks for i in b.items if i.depthwise and i.kind == "conv")
    rt = deployed_macs(s10, "runtime_weight", export_form=False)
    assert rt == s10.macs_with_aggregation
    sk = deployed_macs(s10, "static_k", export_form=False)
    dw_agg = sum(i.macs for b in s10.blocks for i in b.items
                 if i.depthwise and i.kind == "aggregation")
    assert sk == rt + 3 * dw - dw_agg
    assert deployed_macs(mn, "static_k") == mn.macs  # nothing dynamic in MN


def test_bad_arguments() -> None:
    from dymn_edge.errors import DymnEdgeError

    with pytest.raises(DymnEdgeError, match="unknown architecture"):
        count("resnet", 1.0)
    with pytest.raises(DymnEdgeError):
        count("dymn", 1.0, frames=0)
