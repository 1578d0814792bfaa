"""dymn-export as a user runs it: quiet output, and Ctrl-C never leaves a usable-looking file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

#: What third-party chatter looked like before (torch logging, absl, torchao, warnings).
NOISE = re.compile(r"^[WIE]\d{4} |Warning|warn|Failed to load|torchvision|triton|Traceback|License",
                   re.IGNORECASE)


def _exe(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        pytest.fail(f"console script {name} is not installed next to {sys.executable}")
    return str(exe)


def test_ctrl_c_during_validation_leaves_no_file_and_output_is_quiet(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an older file the user still has")  # must survive an interrupted export
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([_exe("dymn-export"), "--model", "dymn-s", "--random-init", "--window",
                             "1", "--format", "onnx", "--output", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("validating in"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[1]
    lines += rest.splitlines()
    assert proc.returncode == 130, lines
    assert lines[-1] == "dymn-export: interrupted", lines
    assert any(line.startswith("converting dymn-s to onnx") and "done in" in line for line in lines)
    noisy = [line for line in lines if NOISE.search(line)]
    assert not noisy, noisy
    assert out.read_bytes() == b"an older file the user still has"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no partial file left

