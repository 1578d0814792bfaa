"""``dymn-bench --front``: the Pareto computation, the points of a result, one tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dymn_edge.benchmarks.front import FUSED_PANEL, FrontPoint, format_front, front_points, pareto_front


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [("a", 1.0, 40.0), ("b", 2.0, 45.0), ("c", 3.0, 44.0),  # c: slower and worse than b
           ("d", 2.0, 45.0),  # an exact tie with b: both stay
           ("e", 5.0, 48.0), ("f", 5.0, 47.0),  # f: as slow as e, less accurate
           ("g", 0.5, 30.0)]
    assert pareto_front(pts) == {"a", "b", "d", "e", "g"}
    assert pareto_front([]) == set()
    assert pareto_front([("x", 1.0, 1.0)]) == {"x"}


def _row(model: str, name: str, cpu_ms: float, status: str = "validated") -> dict:
    cell = {"median_ms": cpu_ms * 1.1, "cpu_median_ms": cpu_ms}
    return {"model": model, "name": name, "format": name.split(":")[0], "status": status,
            "engine": {"onnx": "onnxruntime", "openvino": "openvino"}[name.split(":")[0]],
            "latency": {"1": {"lengths": {"1": cell}}}}


def test_front_points_per_engine_from_a_result() -> None:
    """DyMN-M (47.7) faster than MN-20 (47.8) is on the front; MN-10 (47.1) slower than
    DyMN-M is not; a failed row and the PyTorch row are left out."""
    result = {"artifacts": [
        _row("mn-m", "onnx:fp32", 4.0), _row("dymn-m", "onnx:fp32", 3.5), _row("mn-20", "onnx:fp32", 9.0),
        _row("mn-s", "onnx:fp32", 1.5), _row("dymn-s", "onnx:fp32", 5.0, status="failed"),
        _row("dymn-m", "openvino:fp32", 12.0), _row("mn-m", "openvino:fp32", 4.0),
        {"model": "dymn-m", "name": "pytorch:fp32", "format": "pytorch", "status": "reference"},
    ]}
    points = front_points(result, 1.0)
    assert set(points) == {"onnxruntime", "openvino"}
    ort = {p.model: p for p in points["onnxruntime"]}
    assert [p.model for p in points["onnxruntime"]] == ["mn-s", "dymn-m", "mn-m", "mn-20"]  # by latency
    assert ort["dymn-m"].on_front and ort["mn-20"].on_front and ort["mn-s"].on_front
    assert not ort["mn-m"].on_front
    assert ort["dymn-m"].mAP == 47.7 and ort["dymn-m"].latency_ms == 3.5  # thread CPU time
    ov = {p.model: p for p in points["openvino"]}
    assert ov["mn-m"].on_front and ov["dymn-m"].on_front  # slower but more accurate
    fused = front_points({"artifacts": result["artifacts"] + [
        {**_row("dymn-m", "openvino:fp32", 3.0), "precision": "fused", "name": "openvino:fused"}]}, 1.0)
    panel = {p.model: p for p in fused[FUSED_PANEL]}
    assert set(panel) == {"dymn-m", "mn-m"} and panel["dymn-m"].latency_ms == 3.0  # MN from openvino
    text = format_front(points, 1.0)
    assert "DyMN on the front: dymn-m" in text and "random-init" in text
    assert FrontPoint("x", "dymn-l", 49.1, 1.0).dynamic and not FrontPoint("x", "mn-40", 48.4, 1.0).dynamic


def _front_run(tmp_path: Path, capsys, models: str, formats: str) -> tuple[int, str, dict]:
    from dymn_edge.benchmarks.cli import main

    out = tmp_path / "front.json"
    rc = main(["--front", models, "--formats", formats, "--window", "1", "--budget", "0.2",
               "--workdir", str(tmp_path / "cache"), "--json", str(out), "--quiet",
               "--plot", str(tmp_path / "front.png")])
    return rc, capsys.readouterr().out, json.loads(out.read_text())


def test_tiny_front_end_to_end(tmp_path: Path, capsys) -> None:
    """Two small models, one ONNX file each, timed in ONNX Runtime and OpenVINO (an engine
    row: the same file): exported, timed, tabulated, plotted, in the JSON."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    pytest.importorskip("matplotlib")
    rc, text, result = _front_run(tmp_path, capsys, "mn-s,dymn-s", "onnx:fp32,openvino:fp32,openvino:fused")
    assert rc == 0, text
    assert "onnxruntime:" in text and "openvino:" in text and "random-init" in text
    assert f"{FUSED_PANEL}:" in text
    # the static model has no fused file: skipped with a note, its stock point joins the panel
    assert not any(r["model"] == "mn-s" and r["precision"] == "fused" for r in result["artifacts"])
    assert any("mn-s: no fused rows" in n for n in result["notes"])
    for engine in ("onnxruntime", "openvino", FUSED_PANEL):
        pts = result["front"][engine]
        assert {p["model"] for p in pts} == {"mn-s", "dymn-s"}
        assert all(p["latency_ms"] > 0 for p in pts)
        assert any(p["model"] == "dymn-s" and p["on_front"] for p in pts)  # the most accurate of the two
    rows = {(r["model"], r["name"]): r for r in result["artifacts"]}
    ov, ort = rows[("dymn-s", "openvino:fp32")], rows[("dymn-s", "onnx:fp32")]
    assert (ov["engine"], ort["engine"]) == ("openvino", "onnxruntime") and ov["path"] == ort["path"]
    assert (tmp_path / "front.png").stat().st_size > 0


def test_front_refuses_models_without_published_map(capsys) -> None:
    from dymn_edge.benchmarks.cli import main

    assert main(["--front", "dymn-s-replace-se"]) == 2
    assert "published mAP" in capsys.readouterr().err


@pytest.mark.slow
def test_full_front_every_engine(tmp_path: Path, capsys) -> None:
    """Every MN width and DyMN on ONNX Runtime, OpenVINO and LiteRT at 1 s (long: 9 models x 2 files)."""
    pytest.importorskip("openvino")
    pytest.importorskip("ai_edge_litert")
    rc, text, result = _front_run(tmp_path, capsys, "all", "onnx:fp32,openvino:fp32,openvino:fused,tflite:fp32")
    assert rc == 0, text
    assert set(result["front"]) == {"onnxruntime", "openvino", FUSED_PANEL, "litert"}
    for pts in result["front"].values():
        assert len(pts) == 9 and any(p["on_front"] for p in pts)
