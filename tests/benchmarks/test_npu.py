"""Arm Vela on the FSDD DyMN-S --full-int8 file: every operator on the NPU, for both targets.

The full-int8 export is the session's shared one (tests/conftest.py ``fsdd_export``); Vela
compiles it in a few seconds per accelerator.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ethosu.vela")

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def full_int8_file(fsdd_export):
    return fsdd_export("tflite", "full_int8").path


@pytest.mark.parametrize("accelerator", ["ethos-u55-256", "ethos-u65-512"])
def test_fsdd_dymn_s_full_int8_is_all_npu(full_int8_file, accelerator):
    from dymn_edge.benchmarks.npu import compile_vela

    row = compile_vela(full_int8_file, accelerator)
    assert "error" not in row, row.get("error")
    assert row["cpu_ops"] == 0 and row["npu_share"] == 1.0, row
    assert row["cpu_op_types"] == {}, row["cpu_op_types"]
    assert row["npu_ops"] > 100  # the whole network, not an empty graph
    assert 0 < row["sram_kib"] < 4096 and row["inference_ms"] > 0
    # the MACs Vela schedules are the network's (DyMN-S, 1 s, static_k: ~20-25 M)
    assert 10e6 < row["macs"] < 60e6


def test_cli_npu_table_and_bad_accelerator(full_int8_file, capsys, tmp_path):
    import json

    from dymn_edge.benchmarks.cli import main

    out = tmp_path / "npu.json"
    assert main(["--npu", "ethos-u55-256", "--npu-files", str(full_int8_file), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ethos-u55-256" in text and "100.0 %" in text and "all on the NPU" in text
    rows = json.loads(out.read_text())["npu"]
    assert len(rows) == 1 and rows[0]["accelerator"] == "ethos-u55-256"
    assert main(["--npu", "ethos-u99", "--npu-files", str(full_int8_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown accelerator" in err[0]
