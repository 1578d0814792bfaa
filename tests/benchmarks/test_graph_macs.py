"""The analytic deployed MACs equal the Conv/MatMul/Gemm MACs of an exported ONNX graph."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dymn_edge.benchmarks.graph_macs import count_onnx  # noqa: E402
from dymn_edge.benchmarks.macs import count_model, deployed_macs  # noqa: E402
from dymn_edge.errors import DymnEdgeError  # noqa: E402

FRAMES = 100


def _export(name: str, strategy: str, path: Path) -> Path:
    import warnings

    from dymn_edge.models import create_model
    from dymn_edge.models.patcher import make_exportable

    module = make_exportable(create_model(name, pretrained=False), strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 1, 128, FRAMES),), str(path),
                          input_names=["mel"], output_names=["logits", "embedding"],
                          dynamo=False, opset_version=17)
    return path


@pytest.mark.parametrize("name,strategy", [("dymn-s", "static_k"), ("dymn-s", "runtime_weight"),
                                           ("dymn-s", "stride_split"), ("mn-s", "static_k")])
def test_graph_count_equals_analytic(tmp_path: Path, name: str, strategy: str) -> None:
    path = _export(name, strategy, tmp_path / f"{name}_{strategy}.onnx")
    g = count_onnx(path, frames=FRAMES)
    assert not g.unknown_nodes
    assert g.total == deployed_macs(count_model(name, frames=FRAMES), strategy)
    assert count_onnx(path).total == g.total  # fixed time axis read from the graph
    with pytest.raises(DymnEdgeError, match="fixed time axis"):
        count_onnx(path, frames=2 * FRAMES)
