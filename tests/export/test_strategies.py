"""Every strategy x format x model that ``dymn-export --help`` offers exports and validates.

Parametrized over the formats table, :class:`dymn_edge.arch.DynConvStrategy` and the
registry: DyMN-S (random init, 1 s window) in the default run, the larger models (the
AudioSet default window of 10 s, as a user exports them) marked ``slow``. Each file is
written under umask 027: it must come out 0640 (the umask's mode, not a temporary file's
0600), with no partial file left beside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.arch import DynConvStrategy, strategy_supports_dynamic_batch
from dymn_edge.export.formats import FORMATS, Format
from dymn_edge.registry import Arch, get_spec, list_models

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

FAST_MODEL = "dymn-s"
FUSED = DynConvStrategy.FUSED


def _takes(model: str, fmt: Format, strategy: DynConvStrategy) -> bool:
    """The fused form is an ONNX form of the dynamic models (the other pairs are refused)."""
    return strategy is not FUSED or (fmt is Format.ONNX and get_spec(model).arch is Arch.DYMN)


CASES = [pytest.param(model, fmt, strategy, id=f"{model}-{fmt.value}-{strategy.value}",
                      marks=() if model == FAST_MODEL else pytest.mark.slow)
         for model in list_models() for fmt in FORMATS for strategy in DynConvStrategy
         if _takes(model, fmt, strategy)]


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("model,fmt,strategy", CASES)
def test_every_strategy_exports_and_validates(tmp_path: Path, umask_027: None, model: str, fmt: Format,
                                              strategy: DynConvStrategy) -> None:
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig
    from dymn_edge.metadata import read_metadata

    out = tmp_path / f"m{FORMATS[fmt].suffix}"
    cfg = ExportConfig(model=model, random_init=True, format=fmt, strategy=strategy.value, output=out,
                       window_seconds=1.0 if model == FAST_MODEL else None)
    r = export_model(cfg, progress=False)
    assert r.report["passed"], r.report["errors"]
    meta = read_metadata(out)
    assert meta.strategy == strategy.value and meta.validation["passed"] is True
    assert meta.dynamic_batch == (FORMATS[fmt].dynamic_axes and strategy_supports_dynamic_batch(strategy))
    assert out.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no partial file, no failed file
    if meta.dynamic_batch:
        _batch_rows_match(out, meta.window_frames, "openvino" if strategy is FUSED else "onnxruntime")


def _batch_rows_match(path: Path, frames: int, engine: str) -> None:
    """A dynamic-batch file gives each row of a batch of 3 what it gives that input alone."""
    from dymn_edge.runtime.engines import open_engine

    run = open_engine(path, engine=engine, threads=1).run
    x = np.random.default_rng(0).standard_normal((3, 1, 128, frames + 37)).astype(np.float32)
    logits, emb = run(x)
    assert logits.shape[0] == emb.shape[0] == 3
    for i in range(3):
        lo, em = run(x[i:i + 1])
        np.testing.assert_allclose(logits[i:i + 1], lo, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(emb[i:i + 1], em, rtol=1e-5, atol=1e-5)


def test_waveform_onnx_is_batch_1_whatever_the_strategy(tmp_path: Path) -> None:
    """The in-graph frontend fixes the batch: static_k must not promise one in the metadata."""
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig

    out = tmp_path / "w.onnx"
    r = export_model(ExportConfig(model=FAST_MODEL, random_init=True, format="onnx", strategy="static_k",
                                  waveform=True, window_seconds=1.0, output=out), progress=False)
    assert r.report["passed"], r.report["errors"]
    assert r.metadata.dynamic_batch is False and r.metadata.inputs[0].shape == [1, "samples"]


def test_onnx_writer_refuses_a_fixed_batch(tmp_path: Path) -> None:
    """When torch.export fixes an axis asked to be free, the writer fails instead of writing it."""
    import torch

    from dymn_edge.errors import ExportError
    from dymn_edge.export.onnx_export import export_onnx

    class BatchOne(torch.nn.Module):  # reshape(1): only batch 1 fits
        def forward(self, mel):
            return mel.sum((1, 2, 3)).reshape(1, 1), mel.mean((1, 2)).reshape(1, -1)

    with pytest.raises(ExportError, match="fixed the batch"):
        export_onnx(BatchOne(), tmp_path / "b.onnx", frames=64, dynamic_batch=True, simplify=False)
    path = export_onnx(BatchOne(), tmp_path / "t.onnx", frames=64, dynamic_batch=False, simplify=False)
    assert path.is_file()
