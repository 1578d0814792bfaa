"""The torch-free boundary as one contract that covers new modules by itself.

- Every module of ``dymn_edge.runtime`` (found by :func:`pkgutil.walk_packages`, so a new
  one is checked without being listed) is imported in a fresh child process: no torch, no
  converter, no ``dymn_edge.models`` / ``dymn_edge.export``, and the engines, PortAudio and
  MQTT libraries only when used (not at import).
- The source of every runtime module is scanned (function-local imports included, which an
  import test cannot see): none names torch, ``dymn_edge.models`` or ``dymn_edge.export``;
  and the core (runtime modules outside ``device/`` and ``archive/``) imports neither room,
  except ``cli.py``, the composition root that wires them together.
- The light top-level modules of ``dymn_edge`` (walked too) and the few light parts of the
  exporter and the benchmark a runtime-only install still imports load no torch either.

Each check is itself checked: a planted import is caught.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dymn_edge
import dymn_edge.runtime

HEAVY = ("torch", "onnx", "litert_torch", "onnxscript", "ai_edge_quantizer")
#: never imported by the runtime, at import time or later
FORBIDDEN = (*HEAVY, "dymn_edge.models", "dymn_edge.export")
#: optional engines / devices: imported when used, never when a module is imported
LAZY = ("onnxruntime", "ai_edge_litert", "openvino", "sounddevice", "paho")
#: the runtime's rooms (matching the [device] and [cluster] extras); the core imports neither
ROOMS = ("dymn_edge.runtime.device", "dymn_edge.runtime.archive")
COMPOSITION_ROOT = "dymn_edge.runtime.cli"
#: light modules of the torch packages that a runtime-only install still imports
LIGHT_OUTSIDE_RUNTIME = ["dymn_edge.export.config", "dymn_edge.export.calibration", "dymn_edge.export.validate",
                         "dymn_edge.benchmarks.macs", "dymn_edge.benchmarks.gate"]

RUNTIME_DIR = Path(dymn_edge.runtime.__file__).parent


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def runtime_modules() -> list[str]:
    """``dymn_edge.runtime`` and every module below it."""
    found = [m.name for m in pkgutil.walk_packages(dymn_edge.runtime.__path__, "dymn_edge.runtime.")]
    return ["dymn_edge.runtime", *sorted(found)]


def top_level_modules() -> list[str]:
    """``dymn_edge``'s own modules (not the torch models package)."""
    return ["dymn_edge", *sorted(m.name for m in pkgutil.iter_modules(dymn_edge.__path__, "dymn_edge.")
                                 if not m.ispkg)]


_CHILD = """
import importlib, json, sys
name, forbidden, lazy = sys.argv[1], tuple(json.loads(sys.argv[2])), tuple(json.loads(sys.argv[3]))
try:
    importlib.import_module(name)
except ModuleNotFoundError as exc:  # an optional extra that is not installed (aiohttp, dask)
    if (exc.name or "").split(".")[0] == "dymn_edge":
        raise
    print(json.dumps({"missing": exc.name}))
    sys.exit(0)
under = lambda m, roots: any(m == r or m.startswith(r + ".") for r in roots)
print(json.dumps({"forbidden": sorted(m for m in sys.modules if under(m, forbidden)),
                  "lazy": sorted(m for m in sys.modules if under(m, lazy))}))
"""


def _imports_in_child(module: str, forbidden: tuple[str, ...], lazy: tuple[str, ...] = ()) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, module, json.dumps(forbidden), json.dumps(lazy)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module}: {proc.stderr[-800:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "missing" in out:
        pytest.skip(f"{module} needs {out['missing']} (an optional extra, not installed)")
    return out


@pytest.mark.parametrize("module", runtime_modules())
def test_runtime_module_imports_no_torch_and_no_engine(module: str) -> None:
    out = _imports_in_child(module, FORBIDDEN, LAZY)
    assert out == {"forbidden": [], "lazy": []}, f"{module} imported {out}"


@pytest.mark.parametrize("module", top_level_modules() + LIGHT_OUTSIDE_RUNTIME)
def test_light_module_imports_no_torch(module: str) -> None:
    out = _imports_in_child(module, HEAVY)
    assert out["forbidden"] == [], f"{module} imported {out['forbidden']}"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["dymn_edge.runtime", *parts])


def imported_names(path: Path, root: Path) -> set[str]:
    """Every module ``path`` (a file under the runtime folder ``root``) imports, anywhere in
    it, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # "from pkg import module"
    return names


def boundary_violations(root: Path) -> list[str]:
    """``file: name`` for each forbidden import under ``root`` (a runtime package folder)."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        core = not _under(module, ROOMS) and module != COMPOSITION_ROOT
        for name in sorted(imported_names(path, root)):
            if _under(name, FORBIDDEN) or (core and _under(name, ROOMS)):
                bad.append(f"{path.relative_to(root)}: {name}")
    return bad


def test_runtime_sources_keep_the_boundary() -> None:
    files = list(RUNTIME_DIR.rglob("*.py"))
    assert {"sinks.py", "options.py", "run.py"} <= {p.name for p in files}  # the scan sees all rooms
    assert boundary_violations(RUNTIME_DIR) == []


def test_the_source_scan_catches_planted_imports(tmp_path: Path) -> None:
    (tmp_path / "device").mkdir()
    (tmp_path / "core.py").write_text("def f():\n    import torch\n\nfrom .device import clips\n")
    (tmp_path / "cli.py").write_text("from dymn_edge.runtime.device import options\n")
    (tmp_path / "device" / "x.py").write_text("from ...export import api\n")
    assert boundary_violations(tmp_path) == ["core.py: dymn_edge.runtime.device", "core.py: dymn_edge.runtime.device.clips",
                                             "core.py: torch", "device/x.py: dymn_edge.export",
                                             "device/x.py: dymn_edge.export.api"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (the torch-free tier)")
def test_the_import_check_catches_a_torch_import() -> None:
    out = _imports_in_child("dymn_edge.models.layers", FORBIDDEN)
    assert "torch" in out["forbidden"] and "dymn_edge.models" in out["forbidden"], out
