"""The fused operators build for aarch64 (Raspberry Pi 4 / 5) as well as for the CI's x86-64.

The extension is compiled on the device on first use, so what must hold everywhere is that the
one C++ source compiles and links against the aarch64 ``openvino`` wheel with an Arm compiler.
CI installs Debian's cross compiler (``g++-aarch64-linux-gnu``), downloads the aarch64 wheel of
the OpenVINO version installed here and points ``DYMN_EDGE_AARCH64_OPENVINO`` at its unpacked
``openvino`` folder; elsewhere the test is skipped. Running the result needs an Arm machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dymn_edge.runtime import ops

CROSS = "aarch64-linux-gnu-g++"
ENV = "DYMN_EDGE_AARCH64_OPENVINO"
#: Raspberry Pi 4 (Cortex-A72) and 5 (Cortex-A76); on the device the builder passes -mcpu=native
CPUS = ("cortex-a72", "cortex-a76")


@pytest.mark.parametrize("cpu", CPUS)
def test_extension_cross_builds_for_aarch64(tmp_path: Path, cpu: str) -> None:
    root = os.environ.get(ENV)
    if not root or shutil.which(CROSS) is None:
        pytest.skip(f"needs {CROSS} and ${ENV} (the unpacked aarch64 openvino wheel; .ci/run sets both)")
    libs = Path(root) / "libs"
    lib = next(iter(sorted(libs.glob("libopenvino.so.*"))), None)
    tbb = next(iter(sorted(libs.glob("libtbb.so.*"))), None)
    assert lib is not None and tbb is not None, f"{root}: not an unpacked openvino wheel (libs/)"
    paths = ops.OpenVinoPaths("aarch64", Path(root) / "include", lib, tbb)
    # the builder's own command (TBB included), with the host's -march=native for an Arm core
    cmd = [f"-mcpu={cpu}" if a in ops.arch_flags() else a for a in ops.build_command(CROSS, paths)]
    assert f"-mcpu={cpu}" in cmd and "-DDYMN_USE_TBB" in cmd
    out = tmp_path / ops.LIB_NAME
    cmd += ["-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head = out.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    symbols = subprocess.run(["aarch64-linux-gnu-nm", "-D", "--defined-only", str(out)], capture_output=True,
                             text=True, check=True).stdout
    assert "create_extensions" in symbols  # what OpenVINO's add_extension looks up
