"""The distribution installs export/, runtime/ and benchmarks/ inside dymn_edge only."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_nothing_generic_at_top_level(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("dymn_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"dymn_edge"}
    for sub in ("export", "runtime", "benchmarks", "models"):
        assert f"dymn_edge/{sub}/__init__.py" in names
    assert "dymn_edge/data/class_labels_indices.csv" in names
    # every source module and the dashboard page ship: a sub-package missing from pyproject's
    # `packages` list would otherwise drop out of the wheel (or ship with a setuptools warning)
    roots = {"dymn_edge": REPO / "dymn_edge", "dymn_edge/export": REPO / "export",
             "dymn_edge/runtime": REPO / "runtime", "dymn_edge/benchmarks": REPO / "benchmarks"}
    for prefix, root in roots.items():
        for src in root.rglob("*.py"):
            if "__pycache__" not in src.parts:
                assert f"{prefix}/{src.relative_to(root).as_posix()}" in names, src
    for page in (REPO / "runtime" / "device" / "web_static").iterdir():
        assert f"dymn_edge/runtime/device/web_static/{page.name}" in names, page
    # the fused OpenVINO ops ship as source: the device compiles them on first use
    assert "dymn_edge/runtime/ops/dymn_ops_ov.cpp" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("dymn-export", "dymn-listen", "dymn-tag", "dymn-bench", "dymn-events", "dymn-info"):
        assert script in text
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    base = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert base and not any("torch" in ln or "onnx" in ln for ln in base), base
