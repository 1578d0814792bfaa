"""Op counts of real exported files: the flatbuffer / graph reader against an independent view."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dymn_edge.benchmarks.graph_ops import count_ops
from dymn_edge.errors import DymnEdgeError


def test_tflite_ops_match_the_interpreter(fsdd_export) -> None:
    """The schema reader agrees with LiteRT's own op list on the project's exported file."""
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    path = fsdd_export("tflite", "fp32").path
    ops = count_ops(path)
    oracle = Counter(op["op_name"] for op in Interpreter(str(path))._get_ops_details())
    assert ops["by_type"] == dict(oracle)
    assert ops["total"] == sum(oracle.values()) > 0
    assert ops["by_type"].get("CONV_2D", 0) > 0
    assert not any(k.startswith("BUILTIN_") for k in ops["by_type"])  # every code has a name


def test_onnx_ops_of_the_exported_file(fsdd_export) -> None:
    onnx = pytest.importorskip("onnx")
    path = fsdd_export("onnx", "fp32").path
    ops = count_ops(path)
    nodes = onnx.load(str(path)).graph.node
    assert ops["total"] == len(nodes) > 0
    assert ops["by_type"]["Conv"] == sum(n.op_type == "Conv" for n in nodes) > 0


def test_unreadable_files_fail_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(DymnEdgeError, match="not a readable TFLite"):
        count_ops(bad)
    txt = tmp_path / "x.txt"
    txt.write_text("")
    with pytest.raises(DymnEdgeError, match="knows .onnx and .tflite"):
        count_ops(txt)
    with pytest.raises(DymnEdgeError, match="not found"):
        count_ops(tmp_path / "missing.onnx")
