"""The fused export form end to end: export, validation and runs in OpenVINO, refusals elsewhere.

The operators themselves are tested against a float64 NumPy reference in
``tests/runtime/test_fused_ops.py`` and the form's PyTorch definition against the official
blocks in ``tests/models/test_patcher.py``; here the whole file: a DyMN-S with lively
BatchNorm statistics, exported with ``--strategy fused``, must give what the float64 PyTorch
model gives at several lengths and batches, and what the stock ONNX file of the same weights
gives in ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dymn_edge.errors import DymnEdgeError, EngineError, ExportError

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from dymn_edge.benchmarks.config import normalize_variant, variant_file  # noqa: E402
from dymn_edge.export.api import export_model  # noqa: E402
from dymn_edge.export.config import ExportConfig  # noqa: E402
from dymn_edge.metadata import read_metadata  # noqa: E402
from dymn_edge.models.factory import create_model  # noqa: E402
from dymn_edge.runtime.engines import open_engine  # noqa: E402


def _lively_weights(path: Path) -> torch.nn.Module:
    """DyMN-S with random BatchNorm statistics and affines (outputs that depend on the input)."""
    g = torch.Generator().manual_seed(3)
    model = create_model("dymn-s", pretrained=False).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
            bn.weight.copy_(0.7 + 0.6 * torch.rand(n, generator=g))
            bn.bias.copy_(0.1 * torch.randn(n, generator=g))
    torch.save(model.state_dict(), path)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.nn.Module]:
    """(fused file, stock file, the PyTorch model) of the same weights, 1 s window."""
    tmp = tmp_path_factory.mktemp("fused")
    model = _lively_weights(tmp / "w.pt")
    paths = []
    for strategy in ("fused", None):
        out = tmp / f"{strategy or 'stock'}.onnx"
        r = export_model(ExportConfig(model="dymn-s", weights=tmp / "w.pt", format="onnx", strategy=strategy,
                                      window_seconds=1.0, output=out), progress=False)
        assert r.report["passed"], r.report["errors"]
        paths.append(out)
    return paths[0], paths[1], model


def test_fused_file_says_what_it_is(exported) -> None:
    fused, stock, _ = exported
    meta = read_metadata(fused)
    assert meta.strategy == "fused" and meta.dynamic_batch and meta.dynamic_time
    assert meta.validation["passed"] is True and "openvino" in meta.validation["engine"]
    assert read_metadata(stock).strategy == "stride_split"


@pytest.mark.parametrize("frames,batch", [(100, 1), (317, 1), (1000, 1), (160, 3)])
def test_fused_matches_pytorch_float64_and_the_stock_file(exported, frames: int, batch: int) -> None:
    """Same outputs as float64 PyTorch (within fp32 rounding) and as the stock file in ONNX Runtime."""
    fused, stock, model = exported
    x = np.random.default_rng(frames).normal(-1.0, 1.0, (batch, 1, 128, frames)).astype(np.float32)
    with torch.no_grad():
        ref = [t.numpy() for t in model.double()(torch.from_numpy(x).double())]
    ov = open_engine(fused, engine="auto", threads=1)
    assert ov.name == "openvino"
    got = ov.run(x)
    base = open_engine(stock, engine="onnxruntime", threads=1).run(x) if batch == 1 else None
    for i, name in enumerate(("logits", "embedding")):
        scale = max(1.0, float(np.abs(ref[i]).max()))
        assert float(np.std(ref[i])) > 1e-2, name  # lively: outputs depend on the input
        assert float(np.abs(got[i] - ref[i]).max()) < 1e-4 * scale, name
        if base is not None:
            assert float(np.abs(got[i] - base[i]).max()) < 1e-4 * scale, name


def test_other_engines_refuse_a_fused_file_in_one_line(exported) -> None:
    fused, _, _ = exported
    with pytest.raises(EngineError, match="--strategy fused.*openvino only"):
        open_engine(fused, engine="onnxruntime")
    with pytest.raises(EngineError, match="does not run onnx files"):
        open_engine(fused, engine="litert")
    assert open_engine(fused, engine=None).name == "openvino"  # the validation engine of the form


def test_dymn_tag_and_info_on_a_fused_file(exported, capsys: pytest.CaptureFixture) -> None:
    from dymn_edge.runtime.cli import tag_main
    from dymn_edge.runtime.info import main as info_main

    fused, _, _ = exported
    assert info_main([str(fused)]) == 0
    out = capsys.readouterr().out
    assert "engines     openvino; --engine auto: openvino" in out and "form fused" in out
    wav = Path(__file__).parents[2] / "dymn_edge" / "data"
    clip = next(p for p in wav.iterdir() if p.suffix in (".flac", ".wav"))
    assert tag_main(["--model", str(fused), "--engine", "onnxruntime", str(clip)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strategy fused" in err[0]
    assert tag_main(["--model", str(fused), "--top", "3", str(clip)]) == 0


@pytest.mark.parametrize("kwargs,words", [
    ({"format": "tflite"}, "does not take --strategy fused"),
    ({"format": "onnx", "precision": "int8"}, "fp32"),
    ({"format": "onnx", "waveform": True}, "--waveform"),
])
def test_export_refuses_what_the_form_cannot_be(tmp_path: Path, kwargs: dict, words: str) -> None:
    with pytest.raises(ExportError, match=words):
        ExportConfig(model="dymn-s", random_init=True, strategy="fused", output=tmp_path / "x", **kwargs)


def test_export_refuses_fused_for_a_static_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no dynamic blocks"):  # at the config, before any work
        ExportConfig(model="mn-s", random_init=True, format="onnx", strategy="fused", window_seconds=1.0,
                     output=tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_bench_rows_of_the_form() -> None:
    assert normalize_variant("OpenVINO:Fused") == "openvino:fused"
    assert variant_file("openvino:fused") == ("onnx:fused", "openvino")
    for bad in ("onnx:fused", "tflite:fused", "litert:fused"):
        with pytest.raises(DymnEdgeError, match="openvino:fused"):
            normalize_variant(bad)
