"""The regression gate: trips on a slowed result, passes on an identical one (synthetic numbers)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dymn_edge.benchmarks.gate import compare, parse_percent


def _result(ms: float = 2.0, gemm_ms: float = 1.0, acc: float = 0.96) -> dict:
    def row(name: str, fmt: str, prec: str, factor: float, delta: float) -> dict:
        st = {"median_ms": ms * factor, "p90_ms": ms * factor * 1.1, "gemm_median_ms": gemm_ms,
              "ratio_to_gemm": ms * factor / gemm_ms, "frames": 100, "seconds": 1.0}
        return {"name": name, "format": fmt, "precision": prec, "status": "validated",
                "macs": 13_800_000, "deployed_macs": 15_000_000,
                "latency": {"1": {"lengths": {"1": st}, "rtf": st["median_ms"] / 1e3}},
                "scores": {"accuracy": acc + delta, "map": 0.97 + delta, "clips": 300,
                           "delta_accuracy": delta, "delta_map": delta}}
    ref = row("pytorch:fp32", "pytorch", "fp32", 8.0, 0.0)
    ref["status"] = "reference"
    return {"model": {"name": "dymn-s"}, "accuracy": {"measured": True},
            "artifacts": [ref, row("onnx:fp32", "onnx", "fp32", 1.0, 0.0),
                          row("onnx:int8", "onnx", "int8", 0.8, -0.0033)]}


def test_identical_passes() -> None:
    base = _result()
    res = compare(copy.deepcopy(base), base)
    assert res.ok, res.summary()
    assert res.checked > 10 and "PASSED" in res.summary()


def test_machine_speed_cancels() -> None:
    # a machine 2x slower: artifact and GEMM both twice as long -> same ratio -> pass
    assert compare(_result(ms=4.0, gemm_ms=2.0), _result()).ok


def test_slowed_result_trips_with_message() -> None:
    base = _result()
    slow = copy.deepcopy(base)
    st = slow["artifacts"][1]["latency"]["1"]["lengths"]["1"]
    st["median_ms"] *= 1.3
    st["ratio_to_gemm"] *= 1.3
    res = compare(slow, base, max_regression=0.15)
    assert not res.ok
    msg = res.summary()
    assert "onnx:fp32" in msg and "latency regression" in msg and "+30.0%" in msg
    assert compare(slow, base, max_regression=0.35).ok


def test_macs_and_accuracy_are_gated() -> None:
    base = _result()
    cur = copy.deepcopy(base)
    cur["artifacts"][1]["deployed_macs"] += 1
    res = compare(cur, base)
    assert not res.ok and "deployed_macs" in res.summary()
    cur = copy.deepcopy(base)
    cur["artifacts"][2]["scores"]["delta_accuracy"] = -0.02  # int8: beyond 1 %
    assert not compare(cur, base).ok
    cur["artifacts"][2]["scores"]["delta_accuracy"] = -0.01  # within the int8 tolerance
    assert compare(cur, base).ok
    cur = copy.deepcopy(base)
    cur["artifacts"][1]["scores"]["delta_accuracy"] = -2 / 300  # fp32: two clips > one clip
    assert not compare(cur, base).ok
    cur = copy.deepcopy(base)
    cur["artifacts"][1]["status"] = "failed"
    cur["artifacts"][1]["error"] = "export: boom"
    assert "boom" in compare(cur, base).summary()


def test_cli_compare_exit_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``dymn-bench --compare`` exits 1 on a (baseline scaled down =) slower run, 0 otherwise."""
    from dymn_edge.benchmarks import cli

    base = _result()
    faster_baseline = copy.deepcopy(base)
    for r in faster_baseline["artifacts"]:
        st = r["latency"]["1"]["lengths"]["1"]
        st["median_ms"] /= 1.5
        st["ratio_to_gemm"] /= 1.5
    (tmp_path / "scaled.json").write_text(json.dumps(faster_baseline))
    (tmp_path / "same.json").write_text(json.dumps(base))
    monkeypatch.setattr("dymn_edge.benchmarks.runner.run_benchmark", lambda cfg: base)
    monkeypatch.setattr("dymn_edge.benchmarks.report.format_report", lambda r: "table")
    assert cli.main(["--compare", str(tmp_path / "scaled.json"), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "gate FAILED" in out and "onnx:fp32" in out and "+50.0%" in out
    assert cli.main(["--compare", str(tmp_path / "same.json"), "--quiet"]) == 0
    assert cli.main(["--compare", str(tmp_path / "missing.json")]) == 2


def test_parse_percent() -> None:
    assert parse_percent("15%") == pytest.approx(0.15)
    assert parse_percent("0.2") == pytest.approx(0.2)
    assert parse_percent(25) == pytest.approx(0.25)


def test_reference_row_latency_is_not_gated() -> None:
    """The eager PyTorch yardstick may swing; only shipped files are latency-gated."""
    base = _result()
    cur = copy.deepcopy(base)
    st = cur["artifacts"][0]["latency"]["1"]["lengths"]["1"]
    st["median_ms"] *= 5
    st["ratio_to_gemm"] *= 5
    assert compare(cur, base).ok
    st2 = cur["artifacts"][1]["latency"]["1"]["lengths"]["1"]
    st2["ratio_to_gemm"] *= 1.3
    res = compare(cur, base)
    assert not res.ok and any("onnx:fp32" in f for f in res.failures)
