"""dymn-edge's fused OpenVINO ops: the C++ extension, compiled once per machine, and its loader.

A model exported with the fused strategy holds nodes of ONNX domain ``dymn.edge`` (version 1):
``MixBanks`` (the K-bank weight mixing, att (B, K) @ bank (K, N)), ``DyTail`` (a DyMN block's
activation, per-sample depthwise conv, Dy-ReLU and coordinate-attention gates in one pass),
``DyExpTail`` (``DyTail`` on the block's per-sample 1x1 expansion, computed band by band and
never stored: it pays where the expansion is memory-bound, few input channels on a long plane)
``AxisMeans`` (both means of the context generator in one pass over the block input) and
``Stem`` (the model's first conv and activation, written in the plain layout the first block's
operators read; OpenVINO's conv wrote a blocked layout and reordered it).
OpenVINO runs them through ``dymn_ops_ov.cpp``, which is compiled here on first use against the
headers and libraries inside the ``openvino`` wheel (tuned for this CPU, so not shipped
prebuilt) and cached under ``$DYMN_EDGE_CACHE/ops/<key>/``. The key hashes everything the
binary depends on (source, compiler, flags, OpenVINO version, CPU), so a change builds anew.

Torch-free and cheap to import: OpenVINO is imported only when the extension is built or added.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import NamedTuple

from dymn_edge.errors import EngineError, one_line
from dymn_edge.weights import cache_dir

log = logging.getLogger(__name__)

GRAPH_DOMAIN = "dymn.edge"
GRAPH_DOMAIN_VERSION = 1
SOURCE = Path(__file__).with_name("dymn_ops_ov.cpp")
LIB_NAME = "libdymn_ops_ov.so"
COMPILERS = ("g++", "c++", "clang++")
#: no -ffast-math: the ops must stay within float32 rounding of the reference
BASE_FLAGS = ("-std=c++17", "-O3", "-fopenmp-simd", "-fPIC", "-shared", "-fvisibility=hidden")
NO_COMPILER = ("building the dymn-edge OpenVINO ops needs a C++ compiler: apt install g++ "
               "(or set $CXX; or use a file exported without --strategy fused)")
BUILD_TIMEOUT_S = 600
#: a rough build time for the log line (measured: ~4 s on a 2-core x86-64 VM; small boards are slower)
BUILD_TIME_HINT_S = "5-60"

_added: weakref.WeakSet = weakref.WeakSet()


class ExtensionBuildError(EngineError):
    """The fused-op extension cannot be compiled (no compiler, no OpenVINO headers, a failed build)."""


def find_compiler() -> str:
    """``$CXX``, else the first of g++ / c++ / clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        found = shutil.which(cxx)
        if not found:
            raise ExtensionBuildError(f"$CXX={cxx} is not an executable; {NO_COMPILER}")
        return found
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    raise ExtensionBuildError(NO_COMPILER)


def arch_flags(machine: str | None = None) -> tuple[str, ...]:
    """Tune for this CPU where the compilers take it (x86-64: -march; Arm: -mcpu)."""
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i686", "i386"):
        return ("-march=native",)
    if machine in ("aarch64", "arm64") or machine.startswith("armv"):
        return ("-mcpu=native",)
    return ()


class OpenVinoPaths(NamedTuple):
    """What the extension builds against, from the installed wheel."""

    version: str
    include: Path
    lib: Path  # libopenvino.so.<N>
    tbb: Path | None  # libtbb.so.<N> with its headers: the CPU plugin's thread pool, which the ops share


def openvino_paths() -> OpenVinoPaths:
    """OpenVINO's version, include folder, core library and TBB, from the installed wheel."""
    try:
        import openvino  # noqa: PLC0415 (optional engine, heavy)
    except ImportError as exc:
        raise ExtensionBuildError("the dymn-edge OpenVINO ops need OpenVINO: pip install 'dymn-edge[openvino]'") from exc
    root = Path(openvino.__file__).parent
    include = root / "include"
    libs = sorted((root / "libs").glob("libopenvino.so.*")) or sorted(root.glob("libs/libopenvino.so"))
    if not (include / "openvino" / "op" / "op.hpp").is_file() or not libs:
        raise ExtensionBuildError(f"the OpenVINO install at {root} has no C++ headers / libopenvino.so "
                                  "to build the dymn-edge ops against")
    tbb = sorted((root / "libs").glob("libtbb.so.*"))
    has_tbb = bool(tbb) and (include / "tbb" / "parallel_for.h").is_file()
    return OpenVinoPaths(str(openvino.__version__), include, libs[0], tbb[0] if has_tbb else None)


def _cpu_flags_line() -> str:
    """The CPU's feature line (x86 'flags', Arm 'Features'): -march=native depends on it."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    return next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")


@functools.lru_cache(maxsize=8)
def _compiler_version(cxx: str) -> str:
    """``cxx --version`` (once per process: every Core that loads the ops asks for the key)."""
    try:
        proc = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExtensionBuildError(f"the C++ compiler {cxx} does not run ({one_line(exc)}); {NO_COMPILER}") from exc
    return proc.stdout + proc.stderr


def build_command(cxx: str, ov: OpenVinoPaths) -> list[str]:
    """The one compile-and-link command, less its ``-o`` (the libraries by full path: the wheel
    has no unversioned .so links). With TBB the ops split their channels over the threads of
    the arena the plugin runs the inference in (INFERENCE_NUM_THREADS); without, one thread."""
    tbb = ["-DDYMN_USE_TBB", str(ov.tbb)] if ov.tbb else []
    return [cxx, *BASE_FLAGS, *arch_flags(), "-isystem", str(ov.include), str(SOURCE), str(ov.lib), *tbb,
            f"-Wl,-rpath,{ov.lib.parent}"]


def build_key(cxx: str, ov_version: str, command: list[str]) -> str:
    """sha256 over everything the binary depends on."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), _compiler_version(cxx).encode(), " ".join(command).encode(),
                 ov_version.encode(), platform.machine().encode(), _cpu_flags_line().encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:24]


def _compile(command: list[str], dest: Path) -> None:
    """Run the compiler into a temp file next to ``dest`` and move it into place atomically."""
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    tmp = Path(tmp_name)
    command = [*command, "-o", tmp_name]
    log.info("building the dymn-edge OpenVINO ops (one time, %s s)", BUILD_TIME_HINT_S)
    start = time.monotonic()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if proc.returncode != 0:
            log.debug("compiler output:\n%s", proc.stderr)
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
            raise ExtensionBuildError(f"building the dymn-edge OpenVINO ops failed ({Path(command[0]).name} "
                                      f"exit {proc.returncode}): {one_line(RuntimeError(first))}")
        os.replace(tmp, dest)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExtensionBuildError(f"building the dymn-edge OpenVINO ops failed: {one_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built %s in %.1f s", dest, time.monotonic() - start)


def extension_path(*, rebuild: bool = False) -> Path:
    """The compiled extension for this machine, built on first use (``rebuild``: build again).

    Concurrent callers wait on a file lock, so only one compiles; the library appears in its
    place atomically.
    """
    cxx = find_compiler()
    paths = openvino_paths()
    command = build_command(cxx, paths)
    folder = cache_dir() / "ops" / build_key(cxx, paths.version, command)
    dest = folder / LIB_NAME
    if dest.is_file() and not rebuild:
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / ".lock").open("w")
    except OSError as exc:
        raise ExtensionBuildError(f"cannot write the dymn-edge ops cache at {folder} ({one_line(exc)}); "
                                  "set $DYMN_EDGE_CACHE to a writable folder") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if rebuild or not dest.is_file():  # another process may have built it meanwhile
                _compile(command, dest)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def add_to_core(core: object) -> None:
    """Register the fused ops with an ``openvino.Core`` (once per Core; builds them if needed)."""
    if core in _added:
        return
    core.add_extension(str(extension_path()))  # type: ignore[attr-defined]
    _added.add(core)


def uses_fused_ops(onnx_path: str | Path) -> bool:
    """Whether an ONNX file imports the ``dymn.edge`` domain (a byte scan: no onnx package needed).

    Looks for the domain string as protobuf writes it in an opset import (field 1) or a node
    (field 7), each followed by its length.
    """
    name = GRAPH_DOMAIN.encode()
    needles = (b"\x0a" + bytes([len(name)]) + name, b"\x3a" + bytes([len(name)]) + name)
    with Path(onnx_path).open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return any(data.find(n) >= 0 for n in needles)
