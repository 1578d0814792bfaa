"""`import dymn_edge` and its torch-free core must not import torch (checked in a child process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["dymn_edge", "dymn_edge.registry", "dymn_edge.metadata", "dymn_edge.errors",
        "dymn_edge.weights", "dymn_edge.frontend", "dymn_edge.audio", "dymn_edge.labels",
        "dymn_edge.runtime"]


@pytest.mark.parametrize("module", CORE)
def test_module_imports_no_torch(module: str) -> None:
    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'onnx', 'litert_torch', 'sounddevice') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module} imported {proc.stdout.strip()} {proc.stderr[-500:]}"
