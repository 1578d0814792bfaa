"""A release: one version everywhere, BLAS threads pinned by the tools, a conversion that says
it is alive, dymn-bench's default thread counts."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dymn_edge

REPO = Path(__file__).resolve().parents[1]


def _pyproject_version() -> str:
    return re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_one_version_source() -> None:
    assert dymn_edge.__version__ == _pyproject_version()
    # a checkout reads its pyproject.toml (even when a stale egg-info or editable install says
    # otherwise); an installed wheel has none beside it and reads its metadata
    assert dymn_edge._source_tree_version() in (None, _pyproject_version())


def test_every_tool_prints_the_version(capsys: pytest.CaptureFixture) -> None:
    from dymn_edge.benchmarks.cli import build_parser as bench
    from dymn_edge.export.cli import build_parser as export
    from dymn_edge.runtime.cli import build_listen_parser, build_tag_parser
    from dymn_edge.runtime.device.events_cli import build_parser as events
    from dymn_edge.runtime.info import build_parser as info

    for build in (export, build_tag_parser, build_listen_parser, bench, events, info):
        parser = build()
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["--version"])
        assert exc.value.code == 0
        assert capsys.readouterr().out == f"{parser.prog} {dymn_edge.__version__}\n"


def test_exported_metadata_records_the_version() -> None:
    from dymn_edge.metadata import installed_versions

    assert installed_versions(["dymn-edge"]) == {"dymn-edge": dymn_edge.__version__}


PROBE = """
import numpy, threadpoolctl
from dymn_edge.threads import pin_blas_threads
pinned = pin_blas_threads()
blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
print(pinned, blas[0] if blas else None)
"""


def _probe(**env: str) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    pinned, threads = proc.stdout.split()
    return pinned, threads


def test_blas_pool_pinned_unless_the_user_chose() -> None:
    pinned, threads = _probe()
    if threads == "None":
        pytest.skip("NumPy has no BLAS library threadpoolctl can see")
    assert (pinned, threads) == ("True", "1")
    if (os.cpu_count() or 1) >= 2:  # the user's choice stays
        assert _probe(OPENBLAS_NUM_THREADS="2") == ("False", "2")


def test_bench_default_threads() -> None:
    from dymn_edge.benchmarks.machine import default_threads

    threads, why = default_threads()
    assert threads[0] == 1 and len(threads) in (1, 2) and list(threads) == sorted(set(threads))
    assert why.startswith(f"default threads {','.join(map(str, threads))}:")


@pytest.mark.torch
def test_conversion_ticker(caplog: pytest.LogCaptureFixture) -> None:
    """Off a terminal: a "still ..." line per interval; on one: a status line, cleared."""
    from dymn_edge.export.api import ElapsedTicker

    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="dymn_edge"):
        t = ElapsedTicker("converting x", tty=False, log_every=0.05, stream=out)
        t.start()
        time.sleep(0.3)
        t.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and t.ticks == len(lines)
    assert all(re.search(r"still converting x, \d+ s$", x) for x in lines), lines
    time.sleep(0.1)
    assert len(out.getvalue().splitlines()) == len(lines)  # the thread is gone

    out = io.StringIO()
    t = ElapsedTicker("converting x", tty=True, tty_every=0.05, stream=out)
    t.start()
    time.sleep(0.3)
    t.stop()
    text = out.getvalue()
    assert text.startswith("\rconverting x: ") and text.endswith("\r\033[K")


@pytest.mark.torch
def test_conversion_ticker_reaches_a_redirected_log(tmp_path: Path) -> None:
    """The converters point file descriptor 2 at a capture file while they run: the ticker's
    lines still reach the log the user redirected stderr to."""
    code = """
import logging, time
from dymn_edge.export.api import ElapsedTicker
from dymn_edge.native_output import converter_output
logging.basicConfig(level=logging.INFO, format="%(message)s")
t = ElapsedTicker("converting x", tty=False, log_every=0.05)
t.start()
with converter_output():
    time.sleep(0.4)
t.stop()
"""
    log_file = tmp_path / "export.log"
    with log_file.open("w") as err:
        proc = subprocess.run([sys.executable, "-c", code], stderr=err, timeout=120)
    assert proc.returncode == 0
    lines = log_file.read_text().splitlines()
    assert len([x for x in lines if x.startswith("still converting x, ")]) >= 3, lines
