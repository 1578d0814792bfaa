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


def _with_static(result: dict, ratio: float = 2.0) -> dict:
    """``result`` plus the MN-S rows and DyMN-S ratios of a two-model run."""
    out = copy.deepcopy(result)
    mn_rows = []
    for r in out["artifacts"]:
        r["model"] = "dymn-s"
        mn = copy.deepcopy(r)
        mn["model"] = "mn-s"
        for t, cell in mn["latency"].items():
            for L, st in cell["lengths"].items():
                st["median_ms"] /= ratio
                st["ratio_to_gemm"] /= ratio
                r["latency"][t]["lengths"][L]["ratio_to_static"] = ratio
        r["static_model"] = "mn-s"
        mn_rows.append(mn)
    out["artifacts"] += mn_rows
    out["models"] = {"dymn-s": {}, "mn-s": {}}
    return out


def _scale_ratio(result: dict, model: str, name: str, factor: float) -> None:
    row = next(r for r in result["artifacts"] if r["model"] == model and r["name"] == name)
    st = row["latency"]["1"]["lengths"]["1"]
    st["median_ms"] *= factor
    st["ratio_to_gemm"] *= factor
    if "ratio_to_static" in st:
        st["ratio_to_static"] *= factor


def test_static_ratio_is_its_own_check() -> None:
    base = _with_static(_result())
    assert compare(copy.deepcopy(base), base).ok
    cur = copy.deepcopy(base)
    _scale_ratio(cur, "dymn-s", "onnx:fp32", 1.2)  # +20 %: over the latency gate, under the ratio one
    res = compare(cur, base, max_regression=0.5, max_ratio_regression=0.25)
    assert res.ok, res.summary()
    res = compare(cur, base, max_regression=0.5, max_ratio_regression=0.15)
    assert not res.ok and "DyMN/MN ratio regression" in res.summary() and "+20.0%" in res.summary()
    # MN-S slower by the same amount: the ratio is unchanged, only the latency check can trip
    cur = copy.deepcopy(base)
    _scale_ratio(cur, "mn-s", "onnx:fp32", 1.4)
    assert compare(cur, base, max_regression=0.5, max_ratio_regression=0.25).ok
    # the MN rows missing from the run: the ratio the baseline holds cannot be checked
    cur = copy.deepcopy(base)
    cur["artifacts"] = [r for r in cur["artifacts"] if r["model"] == "dymn-s"]
    for r in cur["artifacts"]:
        for cell in r["latency"].values():
            for st in cell["lengths"].values():
                st.pop("ratio_to_static", None)
    res = compare(cur, base)
    assert not res.ok and "no ratio to mn-s" in res.summary()


def test_baseline_without_mn_rows_skips_the_ratio_check() -> None:
    """An older baseline (DyMN-S only) keeps the gate passing and says how to refresh it."""
    from dymn_edge.benchmarks.gate import REFRESH_COMMAND
    from dymn_edge.benchmarks.report import read_json

    base = read_json(Path(__file__).parents[2] / ".ci/baselines/ci_dymn_s.json")
    assert any(r.get("model") == "mn-s" for r in base["artifacts"])  # the committed one has them
    old = copy.deepcopy(base)
    old["artifacts"] = [r for r in old["artifacts"] if r.get("model") != "mn-s"]
    for r in old["artifacts"]:
        for cell in (r.get("latency") or {}).values():
            for st in cell["lengths"].values():
                if st:
                    st.pop("ratio_to_static", None)
    res = compare(copy.deepcopy(base), old)
    assert res.ok, res.summary()
    assert any("ratio check skipped" in n and REFRESH_COMMAND in n for n in res.notes)
    assert any(n.startswith("mn-s onnx:fp32: not in the baseline") for n in res.notes)
    res = compare(copy.deepcopy(base), base)  # the committed baseline checks the ratio
    assert res.ok and not any("ratio check skipped" in n for n in res.notes)


def test_ci_gate_runs_dymn_s_and_mn_s(tmp_path: Path) -> None:
    """``--ci-gate --compare`` with the committed baseline runs DyMN-S and MN-S."""
    from dymn_edge.benchmarks.cli import _config_from_args, build_parser
    from dymn_edge.benchmarks.gate import CI_CONFIG

    assert CI_CONFIG["model"] == "dymn-s,mn-s" and CI_CONFIG["lengths"] == [1.0]
    assert CI_CONFIG["threads"] == [1]
    baseline = Path(__file__).parents[2] / ".ci/baselines/ci_dymn_s.json"
    args = build_parser().parse_args(["--ci-gate", "--compare", str(baseline),
                                      "--max-regression", "25%", "--quiet"])
    cfg = _config_from_args(args)
    assert cfg.models == ["dymn-s", "mn-s"] and cfg.random_init_models == ("mn-s",)
    assert cfg.formats == ["onnx:fp32", "tflite:fp32", "tflite:int8"] and cfg.window_s == 1.0
