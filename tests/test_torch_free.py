"""The torch-free install: these modules load no torch (nor the converters), each checked in
a fresh child process so that nothing another test imported can hide an import.

``dymn_edge.runtime``'s ``__init__`` imports nothing, so it proves nothing on its own: the
list names the modules that do the work (engines, tagger, stream, CLIs) and the light parts
of the exporter and the benchmark that a runtime-only install still imports. The check is
itself checked: a module that does import torch is caught.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "litert_torch", "onnxscript", "ai_edge_quantizer")

TORCH_FREE = [
    "dymn_edge", "dymn_edge.registry", "dymn_edge.metadata", "dymn_edge.errors",
    "dymn_edge.weights", "dymn_edge.frontend", "dymn_edge.audio", "dymn_edge.labels",
    "dymn_edge.datasets", "dymn_edge.metrics", "dymn_edge.cliutil",
    "dymn_edge.runtime.engines", "dymn_edge.runtime.tagger", "dymn_edge.runtime.stream",
    "dymn_edge.runtime.events", "dymn_edge.runtime.cli", "dymn_edge.runtime.info",
    "dymn_edge.runtime.device.events_cli", "dymn_edge.runtime.archive",
    "dymn_edge.export.config", "dymn_edge.export.calibration", "dymn_edge.export.validate",
    "dymn_edge.benchmarks.macs", "dymn_edge.benchmarks.gate",
]


def _heavy_imports(module: str) -> tuple[int, str]:
    code = (f"import sys, {module}; print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.returncode, (proc.stdout.strip() or proc.stderr[-500:])


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_imports_no_torch(module: str) -> None:
    rc, out = _heavy_imports(module)
    assert rc == 0 and out == "[]", f"{module}: {out}"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (the torch-free tier)")
def test_the_check_catches_a_torch_import() -> None:
    rc, out = _heavy_imports("dymn_edge.models.layers")
    assert rc == 0 and "'torch'" in out, out
