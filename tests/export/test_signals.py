"""A stopped export leaves nothing behind: SIGTERM cleans up, dead exports' partial files go.

A real ``dymn-export`` process (DyMN-S, random init, ONNX) is sent SIGTERM while it converts,
as systemd or a CI runner stops a job; partial files are checked by their owner's PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dymn_edge.atomic import create_partial, remove_dead_partials

#: Lines of a broken run (tracebacks, third-party chatter).
NOISE = ("Traceback", "Error", "Warning")


def _exe(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if not exe.exists():
        pytest.fail(f"console script {name} is not installed next to {sys.executable}")
    return str(exe)


def _dead_pid() -> int:
    """The PID of a process that has exited (reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _owner(partial: Path) -> str:
    """``HOST-PID`` of ``.STEM.HOST-PID.RANDOM.partial.SUFFIX``."""
    return partial.name.split(".")[2]


def _as_owner(partial: Path, owner: str) -> Path:
    """``partial`` renamed as if ``owner`` (``HOST-PID``) had created it."""
    moved = partial.with_name(partial.name.replace(f".{_owner(partial)}.", f".{owner}.", 1))
    partial.rename(moved)
    return moved


def test_partials_of_dead_exports_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    live = create_partial(out)  # this process: alive
    host = _owner(live).rsplit("-", 1)[0]
    dead = _as_owner(create_partial(out), f"{host}-{_dead_pid()}")
    elsewhere = _as_owner(create_partial(out), f"otherhost-{_dead_pid()}")  # a shared folder
    other_output = _as_owner(create_partial(tmp_path / "n.onnx"), f"{host}-{_dead_pid()}")
    unnamed = tmp_path / ".m.partial.onnx"  # no owner in the name: not ours to judge
    unnamed.touch()
    assert live.name.startswith(".m.") and live.name.endswith(".partial.onnx")
    assert remove_dead_partials(out) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (live, elsewhere, other_output, unnamed))


def test_partial_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        part = create_partial(tmp_path / "m.tflite")
    finally:
        os.umask(old)
    assert part.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_sigterm_during_export_cleans_up(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out_dir, tmp = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp.mkdir()
    out = out_dir / "m.onnx"
    out.write_bytes(b"an older file the user still has")
    live = create_partial(out)  # another export, still running (this process)
    host = _owner(live).rsplit("-", 1)[0]
    dead = _as_owner(create_partial(out), f"{host}-{_dead_pid()}")  # an export that was killed
    err_path = tmp_path / "stderr.txt"
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    with open(err_path, "w") as err:
        proc = subprocess.Popen([_exe("dymn-export"), "--model", "dymn-s", "--random-init", "--window",
                                 "1", "--format", "onnx", "--output", str(out)],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 600
            mine = f"-{proc.pid}."
            while not (any(tmp.glob("dymn-edge-export-*"))
                       and any(mine in p.name for p in out_dir.glob(".m.*.partial.onnx"))):
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "the export never started writing"
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = err_path.read_text().splitlines()
    assert rc == 128 + signal.SIGTERM, lines
    assert lines[-1] == "dymn-export: interrupted by SIGTERM", lines
    assert sum("interrupted" in line for line in lines) == 1, lines
    assert not [line for line in lines if any(word in line for word in NOISE)], lines
    assert not list(tmp.glob("dymn-edge-*"))  # the temporary folder is gone (torch's caches may stay)
    assert out.read_bytes() == b"an older file the user still has"
    assert not dead.exists()  # removed when the export started
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([live.name, out.name])
