"""A tiny end-to-end ``dymn-bench`` run writes the table, the JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")


def test_tiny_end_to_end(tmp_path: Path, capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["--random-init", "--formats", "onnx:fp32", "--lengths", "1", "--threads", "1",
               "--budget", "0.1", "--window", "1", "--json", str(out_json), "--plot",
               str(out_png), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "p50 1s ms" in text and "onnx" in text and "pytorch" in text
    assert "accuracy not measured" in text
    result = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in result["artifacts"]}
    onnx = rows["onnx:fp32"]
    assert onnx["status"] in ("validated", "exported"), onnx.get("error")
    assert onnx["graph_macs"] == onnx["deployed_macs"]  # analytic == graph, on the shipped file
    cell = onnx["latency"]["1"]
    assert cell["lengths"]["1"]["runs"] >= 3 and cell["peak_rss_mb"] > 0
    assert cell["lengths"]["1"]["ratio_to_gemm"] > 0 and 0 < cell["lengths"]["1"]["mac_fraction"]
    assert result["machine"]["reference_gemm"]["1"]["gmacs_per_s"] > 0
    assert result["complexity"]["macs_10s"] == 116_505_600
    assert out_png.stat().st_size > 10_000


def test_usage_errors_exit_2(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    assert main(["--model", "dymn-x"]) == 2
    assert "unknown model 'dymn-x'" in capsys.readouterr().err
    assert main(["--formats", "onnx:fp16", "--random-init"]) == 2
    assert main(["--threads", "one"]) == 2
    assert main(["--max-regression", "lots"]) == 2


def test_macs_only(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    assert main(["--macs", "--model", "dymn-m", "--lengths", "10"]) == 0
    assert "0.5765 GMAC" in capsys.readouterr().out
