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
    assert got.mels.shape == (3, 1, 128, 50) and got.source == f"3 audio files of {tmp_path.name}"
    assert np.all(np.isfinite(got.mels))


def test_bad_calibration_folders(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--calibration .*: folder not found"):
        CalibrationConfig(tmp_path / "missing")
    with pytest.raises(ExportError, match="at least one calibration clip"):
        CalibrationConfig(tmp_path, count=0)
    with pytest.raises(ExportError, match="no audio files"):
        calibration_mels(CalibrationConfig(tmp_path), 1.0, FrontendConfig())
