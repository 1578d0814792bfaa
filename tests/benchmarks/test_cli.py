"""A tiny end-to-end ``dymn-bench`` run writes the table, the JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")


def test_tiny_end_to_end(tmp_path: Path, capsys, caplog, monkeypatch) -> None:
    """Two models in one run: table, JSON, plot, ratios, op counts; a second run only measures."""
    import logging

    import torch

    from dymn_edge.benchmarks import artifacts
    from dymn_edge.benchmarks.cli import main
    from dymn_edge.models import create_model

    cache = tmp_path / "cache"
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--model", "dymn-s,mn-s", "--random-init", "--formats", "onnx:fp32", "--lengths",
            "1", "--threads", "1", "--budget", "0.1", "--window", "1", "--workdir", str(cache),
            "--json", str(out_json), "--quiet"]
    rc = main([*argv, "--plot", str(out_png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "p50 1s ms" in text and "onnx" in text and "pytorch" in text
    assert "/MN 1s" in text and "xeager 1s" in text and "ops" in text and "cpu 1s ms" in text
    assert "accuracy not measured" in text
    result = json.loads(out_json.read_text())
    assert result["config"]["models"] == ["dymn-s", "mn-s"]
    rows = {(r["model"], r["name"]): r for r in result["artifacts"]}
    assert set(rows) == {(m, n) for m in ("dymn-s", "mn-s") for n in ("pytorch:fp32", "onnx:fp32")}
    onnx = rows[("dymn-s", "onnx:fp32")]
    assert onnx["status"] in ("validated", "exported"), onnx.get("error")
    assert onnx["graph_macs"] == onnx["deployed_macs"]  # analytic == graph, on the shipped file
    cell = onnx["latency"]["1"]
    st = cell["lengths"]["1"]
    assert st["runs"] >= 3 and cell["peak_rss_mb"] > 0
    assert st["ratio_to_gemm"] > 0 and 0 < st["mac_fraction"]
    # the DyMN / MN ratio and the eager speed-up are ratios of medians of the same run
    mn = rows[("mn-s", "onnx:fp32")]["latency"]["1"]["lengths"]["1"]
    assert onnx["static_model"] == "mn-s"
    # at 1 thread the ratios are of thread CPU time (steadier than wall on a shared box)
    assert st["cpu_median_ms"] > 0 and mn["cpu_median_ms"] > 0
    assert st["ratio_to_static"] == pytest.approx(st["cpu_median_ms"] / mn["cpu_median_ms"])
    eager = rows[("dymn-s", "pytorch:fp32")]["latency"]["1"]["lengths"]["1"]
    assert st["speedup_vs_eager"] == pytest.approx(eager["cpu_median_ms"] / st["cpu_median_ms"])
    assert "ratio_to_static" not in mn and "speedup_vs_eager" in mn
    # op counts: every Conv2d of MN-S is one Conv node (BatchNorm folded into it)
    n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in create_model("mn-s", pretrained=False).modules())
    mn_ops = rows[("mn-s", "onnx:fp32")]["ops"]
    assert mn_ops["by_type"]["Conv"] == n_conv and mn_ops["total"] > n_conv
    assert onnx["ops"]["total"] > 0 and "ops" not in rows[("dymn-s", "pytorch:fp32")]
    assert result["machine"]["reference_gemm"]["1"]["gmacs_per_s"] > 0
    assert result["complexity"]["macs_10s"] == 116_505_600
    assert result["models"]["mn-s"]["model"]["static_partner"] is None
    assert out_png.stat().st_size > 10_000

    # Second identical run: the files come from the export cache; the exporter is not called
    files = sorted(cache.glob("*/*.onnx"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_export(*_a, **_k):
        raise AssertionError("the exporter ran although the cache holds the file")

    monkeypatch.setattr("dymn_edge.export.api.export_model", no_export)
    caplog.set_level(logging.INFO, logger="dymn_edge.benchmarks.artifacts")
    assert main(argv) == 0
    assert "(cached)" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in sorted(cache.glob("*/*.onnx"))] == mtimes
    assert sum("reused" in r.getMessage() for r in caplog.records) == 2
    again = {(r["model"], r["name"]): r for r in json.loads(out_json.read_text())["artifacts"]}
    assert again[("dymn-s", "onnx:fp32")]["cached"] is True
    assert again[("dymn-s", "onnx:fp32")]["ops"] == onnx["ops"]
    # --no-cache goes to the exporter again (here the tripwire: the row fails, says why)
    row = artifacts.export_artifact("mn-s", "onnx:fp32", None, True, 1.0, None, cache, use_cache=False)
    assert row["status"] == "failed"
    assert "the exporter ran" in row["error"]


def test_usage_errors_exit_2(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    assert main(["--model", "dymn-x"]) == 2
    assert "unknown model 'dymn-x'" in capsys.readouterr().err
    assert main(["--formats", "onnx:fp16", "--random-init"]) == 2
    assert main(["--threads", "one"]) == 2
    assert main(["--max-regression", "lots"]) == 2
    assert main(["--max-ratio-regression", "lots"]) == 2
    assert "--max-ratio-regression" in capsys.readouterr().err
    assert main(["--model", "dymn-s,mn-s", "--weights", __file__]) == 2
    assert "one checkpoint" in capsys.readouterr().err


def test_macs_only(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    assert main(["--macs", "--model", "dymn-m,mn-m", "--lengths", "10"]) == 0
    out = capsys.readouterr().out
    assert "dymn-m, 10 s" in out and "0.5765 GMAC" in out and "mn-m, 10 s" in out
    assert "published AudioSet mAP 47.7" in out and "published AudioSet mAP 47.1" in out  # the paper's


def test_help_explains_the_new_columns(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("/MN", "ratio_to_static", "xeager", "speedup_vs_eager", "ops", "(cached)",
                 "--no-cache", "--max-ratio-regression", "dymn-m,mn-m"):
        assert word in out, word
