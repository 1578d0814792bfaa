"""The replace_se DyMN variant is a registered model: layout, checkpoints, patcher parity, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_file
from dymn_edge.errors import WeightsError
from dymn_edge.models import create_model
from dymn_edge.models.dymn import DynamicInvertedResidual
from dymn_edge.registry import Arch, get_spec, list_models


@pytest.fixture(scope="module")
def layouts() -> dict:
    return json.loads(require_file("reference/efficientat_state_dict_layouts.json").read_text())


def test_registered_at_every_width() -> None:
    for name, width in (("dymn-s-replace-se", 0.4), ("dymn-m-replace-se", 1.0), ("dymn-l-replace-se", 2.0)):
        spec = get_spec(name)
        assert name in list_models() and spec.arch is Arch.DYMN_REPLACE_SE and spec.width == width
        assert spec.filename is None  # nothing released upstream: no download is attempted


@pytest.mark.parametrize("name,dymn,mn", [("dymn-s-replace-se", "dymn04_as", "mn04_as"),
                                          ("dymn-m-replace-se", "dymn10_as", "mn10_as")])
def test_layout_is_official_dymn_with_static_mn_blocks(name: str, dymn: str, mn: str, layouts: dict) -> None:
    """Dynamic blocks and the rest have the official DyMN keys; static blocks the MN block keys."""
    model = create_model(name, pretrained=False)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    dy, st = layouts[dymn]["state_dict"], layouts[mn]["state_dict"]
    static = {i for i, b in enumerate(model.layers) if not isinstance(b, DynamicInvertedResidual)}
    assert static and len(static) < len(model.layers)
    expected = {k: v for k, v in dy.items()
                if not (k.startswith("layers.") and int(k.split(".")[1]) in static)}
    for i in static:  # DyMN layers.i is MN features.(i + 1) (features.0 is the MN stem)
        prefix = f"features.{i + 1}."
        expected.update({f"layers.{i}." + k[len(prefix):]: v for k, v in st.items() if k.startswith(prefix)})
    assert set(ours) == set(expected), sorted(set(ours) ^ set(expected))[:10]
    assert ours == expected


def test_checkpoint_round_trip_and_no_download(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no released weights"):
        create_model("dymn-m-replace-se", allow_download=False)
    ref = create_model("dymn-s-replace-se", pretrained=False, seed=3)
    path = tmp_path / "rse.pt"
    torch.save(ref.state_dict(), path)
    loaded = create_model("dymn-s-replace-se", weights=path)
    x = torch.randn(1, 1, 128, 100)
    with torch.no_grad():
        assert torch.equal(ref(x)[0], loaded(x)[0])


@pytest.mark.parametrize("strategy", ["static_k", "runtime_weight", "fused"])
def test_patcher_parity(strategy: str) -> None:
    from dymn_edge.models.patcher import make_exportable

    model = create_model("dymn-s-replace-se", pretrained=False, seed=1)
    patched = make_exportable(model, strategy)
    x = torch.randn(1, 1, 128, 100) * 2
    with torch.no_grad():
        a, b = model(x), patched(x)
    assert float((a[0] - b[0]).abs().max()) < 1e-4 and float((a[1] - b[1]).abs().max()) < 1e-4


def test_onnx_export_validates(tmp_path: Path) -> None:
    require_file("reference/metro_station-paris.wav")
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig
    from dymn_edge.metadata import read_metadata

    res = export_model(ExportConfig(model="dymn-s-replace-se", random_init=True, format="onnx",
                                    window_seconds=1.0, output=tmp_path / "rse.onnx"), progress=False)
    assert res.report["passed"], res.report["errors"]
    meta = read_metadata(res.path)
    assert meta.model_name == "dymn-s-replace-se" and meta.arch == "dymn_replace_se" and meta.untrained
    assert meta.output_activation == "sigmoid" and np.isfinite(res.report["max_abs_diff"])
