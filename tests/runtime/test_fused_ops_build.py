"""The fused operators' builder (dymn_edge.runtime.ops): cache, key, rebuild, lock, error lines.

Torch- and onnx-free, so the Raspberry Pi tier of CI runs it on the installed wheel: the C++
source ships in the wheel and compiles with the real g++ against the installed OpenVINO. The
operators themselves are tested in ``test_fused_ops.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dymn_edge.runtime import ops


def test_the_library_loads_into_openvino(cache) -> None:
    """What the engine does with a fused file: the built library registers with a Core."""
    ov = pytest.importorskip("openvino")
    _, path = cache
    core = ov.Core()
    ops.add_to_core(core)
    ops.add_to_core(core)  # once per Core: a second call is a no-op, not a duplicate registration
    assert ops.SOURCE.is_file() and path.name == ops.LIB_NAME


def test_cached_library_is_reused_and_a_new_key_builds_anew(cache, monkeypatch) -> None:
    root, first = cache
    assert first.is_file() and first.is_relative_to(root / "ops")
    mtime = first.stat().st_mtime_ns
    assert ops.extension_path() == first and first.stat().st_mtime_ns == mtime
    monkeypatch.setattr(ops, "BASE_FLAGS", (*ops.BASE_FLAGS, "-DDYMN_TEST_KEY=1"))
    other = ops.extension_path()
    assert other != first and other.is_file() and first.stat().st_mtime_ns == mtime
    assert not [p for p in other.parent.iterdir() if p.name.startswith(".build-")]  # temp file moved in place


def test_rebuild_replaces_the_library(cache) -> None:
    _, first = cache
    before = first.stat().st_mtime_ns
    assert ops.extension_path(rebuild=True) == first
    assert first.stat().st_mtime_ns > before


def test_two_processes_build_once(tmp_path: Path) -> None:
    """The file lock: two processes on an empty cache, one compile, one library."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            "from dymn_edge.runtime import ops; print('PATH', ops.extension_path())")
    env = {**os.environ, "DYMN_EDGE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {ln.split(" ", 1)[1] for out in outs for ln in out.splitlines() if ln.startswith("PATH ")}
    assert len(paths) == 1 and Path(paths.pop()).is_file()
    assert sum(out.count("building the dymn-edge OpenVINO ops") for out in outs) == 1, outs


def test_missing_compiler_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent")
    with pytest.raises(ops.ExtensionBuildError) as err:
        ops.extension_path()
    assert "\n" not in str(err.value) and "/nonexistent" in str(err.value) and "apt install g++" in str(err.value)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    with pytest.raises(ops.ExtensionBuildError, match="needs a C\\+\\+ compiler") as err:
        ops.extension_path()
    assert "\n" not in str(err.value)


def test_unwritable_cache_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(blocker / "cache"))  # under a file: even root cannot mkdir
    with pytest.raises(ops.ExtensionBuildError, match="cannot write the dymn-edge ops cache") as err:
        ops.extension_path()
    assert "\n" not in str(err.value) and "DYMN_EDGE_CACHE" in str(err.value)


def test_failed_compile_is_one_line_with_the_error(tmp_path: Path, monkeypatch) -> None:
    fake = tmp_path / "fake++"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo fake 1.0; exit 0; }\n"
                    "echo 'In file included from x.hpp' >&2; echo 'x.cpp:1:2: error: boom' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DYMN_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(ops.ExtensionBuildError, match="fake\\+\\+ exit 1\\): x.cpp:1:2: error: boom") as err:
        ops.extension_path()
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built left in the cache
