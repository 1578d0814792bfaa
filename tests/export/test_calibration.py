"""Calibration data is the caller's: a typed CalibrationConfig, no default, recorded by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dymn_edge.errors import ExportError
from dymn_edge.export.calibration import calibration_mels
from dymn_edge.export.config import CalibrationConfig
from dymn_edge.registry import FrontendConfig


def test_labelled_set_gives_its_train_split(fsdd_dir: Path) -> None:
    cal = CalibrationConfig(fsdd_dir, count=8, method="minmax")
    got = calibration_mels(cal, 1.0, FrontendConfig())
    assert got.mels.shape == (8, 1, 128, 100) and got.mels.dtype == np.float32
    assert got.source == "8 fsdd:train clips of fsdd"  # never the test split accuracy uses
    assert cal.to_dict() == {"source": "fsdd", "count": 8, "method": "minmax"}


def test_any_folder_of_audio(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    (tmp_path / "sub").mkdir()
    for i, name in enumerate(("c0.flac", "sub/c1.wav", "sub/c2.wav")):  # any format, any depth
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(16000 + 9000 * i)).astype(np.float32), 16000)
    got = calibration_mels(CalibrationConfig(tmp_path, count=64), 0.5, FrontendConfig())
    # a seeded quarter of the files (at least one) is held out: calibration takes the rest
    assert got.mels.shape == (2, 1, 128, 50) and got.source == f"2 audio files of {tmp_path.name}"
    assert got.heldout.mels.shape == (1, 1, 128, 50) and got.heldout.targets is None
    assert not set(got.files) & set(got.heldout.files)
    assert set(got.files) | set(got.heldout.files) == {tmp_path / "c0.flac", tmp_path / "sub/c1.wav",
                                                       tmp_path / "sub/c2.wav"}
    assert np.all(np.isfinite(got.mels))


def test_bad_calibration_folders(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--calibration .*: folder not found"):
        CalibrationConfig(tmp_path / "missing")
    with pytest.raises(ExportError, match="at least one calibration clip"):
        CalibrationConfig(tmp_path, count=0)
    with pytest.raises(ExportError, match="no audio files"):
        calibration_mels(CalibrationConfig(tmp_path), 1.0, FrontendConfig())


def test_int8_picks_static_onnx_with_calibration(tmp_path: Path) -> None:
    """--int8 gives the fastest int8 within the accuracy bound: ONNX static QDQ when calibration
    audio is given (faster than dynamic, FSDD within 0.5 points), dynamic without; TFLite
    weight-only either way (README "int8 and NPUs")."""
    from dymn_edge.export.config import ExportConfig, QuantScheme

    sf.write(tmp_path / "a.wav", np.zeros(16000, np.float32), 16000)
    common = {"model": "dymn-s", "random_init": True, "precision": "int8"}
    onnx_cal = ExportConfig(format="onnx", calibration=tmp_path, output=tmp_path / "a.onnx", **common)
    assert onnx_cal.quantization.scheme is QuantScheme.STATIC_QDQ and onnx_cal.quantization.reduce_range
    onnx_plain = ExportConfig(format="onnx", output=tmp_path / "b.onnx", **common)
    assert onnx_plain.quantization.scheme is QuantScheme.DYNAMIC
    tfl = ExportConfig(format="tflite", output=tmp_path / "c.tflite", **common)
    assert tfl.quantization.scheme is QuantScheme.WEIGHT_ONLY
