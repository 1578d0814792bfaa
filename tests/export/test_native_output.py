"""Converter console noise is captured, replayed with --verbose, and never lost on failure."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from dymn_edge.native_output import converter_output


def _noisy() -> None:
    os.write(2, b"I0000 flatbuffer_export.cc] Estimated count of arithmetic ops\n")
    os.write(1, b"(00:00) [START] LiteRT-Torch Convert\n")
    warnings.warn("isinstance(treespec, LeafSpec) is deprecated", FutureWarning, stacklevel=1)
    logging.getLogger("torchao").warning("Failed to load _C_mxfp8")


def test_quiet_by_default(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    level = logging.getLogger("torchao").level  # whatever earlier tests left there
    logging.getLogger("torchao").setLevel(logging.NOTSET)
    with caplog.at_level(logging.INFO, logger="dymn_edge"), converter_output():
        _noisy()
    out, err = capfd.readouterr()
    assert "Estimated count" not in err and "LiteRT-Torch" not in out and "LeafSpec" not in err
    assert not [r for r in caplog.records if "mxfp8" in r.getMessage()]
    assert logging.getLogger("torchao").level == logging.NOTSET  # restored
    logging.getLogger("torchao").setLevel(level)
    os.write(2, b"after\n")  # the descriptors are back
    assert "after" in capfd.readouterr().err


def test_replayed_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="dymn_edge"), converter_output():
        _noisy()
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert "Estimated count of arithmetic ops" in text and "LiteRT-Torch Convert" in text


def test_failure_keeps_the_tail(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="dymn_edge"), pytest.raises(RuntimeError):
        with converter_output():
            os.write(2, b"error: 'tfl.batch_matmul' op failed to legalize\n")
            raise RuntimeError("conversion failed")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "failed to legalize" in errors[0]


def test_tflite_quantizer_draws_no_bar(fsdd_export, capfd: pytest.CaptureFixture[str]) -> None:
    """AEQ draws "Applying Transformations to tensors" for graphs over 100 tensors even when
    told not to (its quantize drops the flag); the export must not show it."""
    from dymn_edge.export.config import QuantizationConfig
    from dymn_edge.export.quantize import tflite_int8

    data = fsdd_export("tflite", "fp32").path.read_bytes()
    capfd.readouterr()
    out = tflite_int8(data, QuantizationConfig(scheme="weight_only"))
    captured = capfd.readouterr()
    assert len(out) < len(data)  # int8 weights: the quantizer ran
    assert "Applying Transformations" not in captured.err + captured.out
