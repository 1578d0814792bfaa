"""The training-faithful models: official layouts, golden outputs, registry and weights."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_file
from dymn_edge.errors import UnknownModelError, WeightsError
from dymn_edge.models import create_model
from dymn_edge.models.dymn import DynamicConv
from dymn_edge.models.factory import build_model
from dymn_edge.registry import get_spec, list_models

OFFICIAL = {"dymn04_as": "dymn-s", "dymn10_as": "dymn-m", "dymn20_as": "dymn-l",
            "mn04_as": "mn-s", "mn10_as": "mn-m"}


@pytest.fixture(scope="module")
def layouts() -> dict:
    return json.loads(require_file("reference/efficientat_state_dict_layouts.json").read_text())


@pytest.mark.parametrize("official", sorted(OFFICIAL))
def test_state_dict_matches_official_layout(official: str, layouts: dict) -> None:
    spec = get_spec(official)
    assert spec.name == OFFICIAL[official]
    model = build_model(spec)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = layouts[official]["state_dict"]
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))[:10]
    assert {k: ours[k] for k in theirs} == theirs
    assert sum(p.numel() for p in model.parameters()) == layouts[official]["params"]
    # strict loading of a state dict with exactly that layout
    fake = {k: torch.zeros(s) if s else torch.tensor(0) for k, s in theirs.items()}
    model.load_state_dict(fake, strict=True)


@pytest.mark.parametrize("case,tol", [("10s", 1e-4), ("1s", 1e-4), ("batch2", 1e-3)])
def test_golden_dymn04_outputs(case: str, tol: float, golden_io: dict) -> None:
    model = create_model("dymn-s", weights=require_file("reference/golden_dymn04.pt"))
    x = torch.from_numpy(golden_io[f"mel_{case}"]).unsqueeze(1)
    with torch.no_grad():
        logits, embed = model(x)
    d_logits = np.abs(logits.numpy() - golden_io[f"logits_{case}"]).max()
    d_embed = np.abs(embed.numpy() - golden_io[f"embed_{case}"]).max()
    logging.getLogger(__name__).info("golden %s: logits %.2e embed %.2e", case, d_logits, d_embed)
    assert logits.shape == golden_io[f"logits_{case}"].shape
    assert embed.shape == golden_io[f"embed_{case}"].shape
    assert d_logits < tol and d_embed < tol, (d_logits, d_embed)


def test_inference_temperature_is_one_and_matters(golden_io: dict) -> None:
    path = require_file("reference/golden_dymn04.pt")
    model = create_model("dymn-s", weights=path)
    temps = {m.temperature for m in model.modules() if isinstance(m, DynamicConv)}
    assert temps == {1.0}
    hot = create_model("dymn-s", weights=path, temperature=30.0)
    x = torch.from_numpy(golden_io["mel_1s"]).unsqueeze(1)
    with torch.no_grad():
        diff = (model(x)[0] - hot(x)[0]).abs().max().item()
    assert diff > 1e-3, "temperature had no effect: the attention is not being used"


def test_replace_se_variant_has_dynamic_blocks_only_where_se() -> None:
    from dymn_edge.models.dymn import DyMN, DynamicInvertedResidual

    model = DyMN(0.4, replace_se=True).eval()
    dynamic = [isinstance(b, DynamicInvertedResidual) for b in model.layers]
    assert dynamic == [False, False, False, True, True, True, False, False, False, False,
                       True, True, True, True, True]
    with torch.no_grad():
        logits, embed = model(torch.randn(2, 1, 128, 64))
    assert logits.shape == (2, 527) and embed.shape == (2, 384)


def test_random_init_is_flagged_and_seeded() -> None:
    a = create_model("dymn-s", pretrained=False, seed=3)
    b = create_model("dymn-s", pretrained=False, seed=3)
    assert a.untrained and b.untrained
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_fine_tuned_weights_keep_their_class_count(fsdd_weights: Path) -> None:
    model = create_model("dymn-s", weights=fsdd_weights)
    assert model.classifier[5].out_features == 10
    assert model.untrained is False


def test_other_num_classes_loads_all_but_head(fsdd_weights: Path, caplog) -> None:
    sd = torch.load(fsdd_weights, weights_only=True)
    with caplog.at_level(logging.WARNING):
        model = create_model("dymn-s", weights=fsdd_weights, num_classes=5)
    assert "loading everything but the last layer" in caplog.text
    assert model.classifier[5].out_features == 5
    assert torch.equal(model.state_dict()["classifier.2.weight"], sd["classifier.2.weight"])


def test_unknown_model_suggests() -> None:
    with pytest.raises(UnknownModelError, match="Did you mean 'dymn-m'"):
        get_spec("dymnm")
    assert get_spec("DyMN10_AS").name == "dymn-m"
    assert list_models()[:3] == ["dymn-s", "dymn-m", "dymn-l"]


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_model("dymn-s", weights=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt: not a readable PyTorch checkpoint"):
        create_model("dymn-s", weights=junk)
    wrong = tmp_path / "mn.pt"
    torch.save(build_model(get_spec("mn-s")).state_dict(), wrong)
    with pytest.raises(WeightsError, match="do not fit this architecture"):
        create_model("dymn-s", weights=wrong)


def test_offline_error_says_where_to_put_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path))
    monkeypatch.setattr("dymn_edge.registry.RELEASE_URL", "http://127.0.0.1:9/")  # closed port
    with pytest.raises(WeightsError) as err:
        create_model("dymn-m")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "dymn10_as.pt") in msg


def test_download_to_cache_with_progress(tmp_path: Path, monkeypatch) -> None:
    """The real download path, served from a loopback HTTP server holding a file we make."""
    served = tmp_path / "served"
    served.mkdir()
    torch.save(build_model(get_spec("mn-s")).state_dict(), served / "mn04_as_mAP_432.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr("dymn_edge.registry.RELEASE_URL", f"http://127.0.0.1:{server.server_port}/")
        monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path / "cache"))
        model = create_model("mn-s")
        assert (tmp_path / "cache" / "mn04_as_mAP_432.pt").is_file()
        assert model.weights_path == tmp_path / "cache" / "mn04_as_mAP_432.pt"
        server.shutdown()
        # second call resolves from the cache without the server
        assert create_model("mn04_as").weights_path == model.weights_path
    finally:
        server.shutdown()


# The other official MobileNetV3 widths (the front of dymn-bench --front): width, published
# mAP and embedding size (6 x the last block's 160 channels at that width).
OTHER_MN = {"mn05_as": ("mn-05", 0.5, 44.3, 480), "mn20_as": ("mn-20", 2.0, 47.8, 1920),
            "mn30_as": ("mn-30", 3.0, 48.2, 2880), "mn40_as": ("mn-40", 4.0, 48.4, 3840)}


@pytest.mark.parametrize("official", sorted(OTHER_MN))
def test_other_mn_widths_build_and_run(official: str) -> None:
    from dymn_edge.registry import RELEASE_URL, Arch

    name, width, mAP, embed = OTHER_MN[official]
    spec = get_spec(official)
    assert (spec.name, spec.arch, spec.width, spec.published_mAP) == (name, Arch.MN, width, mAP)
    assert spec.url == f"{RELEASE_URL}{official}_mAP_{round(mAP * 10)}.pt"
    model = create_model(name, pretrained=False)
    with torch.no_grad():
        logits, emb = model(torch.randn(2, 1, 128, 64))
    assert logits.shape == (2, 527) and emb.shape == (2, embed)
    assert torch.isfinite(logits).all()


def test_released_mn_file_names_carry_their_mAP() -> None:
    """EfficientAT names its MN releases ``mnXX_as_mAP_NNN.pt``: the registry's mAP must match."""
    from dymn_edge.registry import Arch

    mns = [get_spec(n) for n in list_models() if get_spec(n).arch is Arch.MN]
    assert len(mns) == 6
    for spec in mns:
        assert spec.filename == f"mn{round(spec.width * 10):02d}_as_mAP_{round(spec.published_mAP * 10)}.pt"


def test_download_shows_no_bar_off_a_terminal(tmp_path: Path, capfd) -> None:
    """A redirected run (stderr not a terminal) downloads quietly: no carriage-return bar."""
    from dymn_edge.weights import download

    served = tmp_path / "served"
    served.mkdir()
    (served / "w.pt").write_bytes(bytes(range(256)) * 4096)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = download(f"http://127.0.0.1:{server.server_port}/w.pt", tmp_path / "cache" / "w.pt")
    finally:
        server.shutdown()
    assert dest.read_bytes() == (served / "w.pt").read_bytes()
    assert "\r" not in capfd.readouterr().err
