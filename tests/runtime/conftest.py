"""Runtime fixtures: the trained FSDD DyMN-S exported by the project's own exporter.

The runtime is tested on real files written by ``dymn_edge.export.api.export_model`` (ONNX
and TFLite, window 1 s, softmax head, FSDD labels), once per session. When the exporter
cannot be imported (a runtime-only install without torch) the tests that need a model skip
with that reason; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import in_ci

FSDD_LABELS = "datasets/fsdd/labels.csv"


def _export(request: pytest.FixtureRequest, fmt: str, precision: str = "fp32") -> Path:
    # Files exported earlier can be reused to iterate quickly: DYMN_EDGE_RUNTIME_MODELS=DIR
    # holding fsdd_dymn04_<precision>.<fmt> (never set in CI: there the exporter runs).
    reuse = os.environ.get("DYMN_EDGE_RUNTIME_MODELS")
    if reuse and not in_ci() and (Path(reuse) / f"fsdd_dymn04_{precision}.{fmt}").is_file():
        return Path(reuse) / f"fsdd_dymn04_{precision}.{fmt}"
    return Path(request.getfixturevalue("fsdd_export")(fmt, precision).path)


@pytest.fixture(scope="session")
def fsdd_onnx(request: pytest.FixtureRequest) -> Path:
    """FSDD DyMN-S as ONNX fp32 (dynamic time)."""
    return _export(request, "onnx")


@pytest.fixture(scope="session")
def fsdd_tflite(request: pytest.FixtureRequest) -> Path:
    """FSDD DyMN-S as TFLite fp32 (fixed 1 s window)."""
    return _export(request, "tflite")


@pytest.fixture(scope="session", params=["onnx", "tflite"])
def fsdd_model(request: pytest.FixtureRequest) -> Path:
    """Both formats, one after the other."""
    return request.getfixturevalue(f"fsdd_{request.param}")


@pytest.fixture(scope="session")
def fsdd_test_clips(fsdd_dir: Path) -> list[tuple[Path, int]]:
    """A handful of test-split clips (one per digit, varied speakers) with their digit."""
    rows = list(csv.DictReader((fsdd_dir / "split.csv").open()))
    speakers = sorted({r["speaker"] for r in rows})
    picked: list[tuple[Path, int]] = []
    for digit in range(10):
        spk = speakers[digit % len(speakers)]
        for r in rows:
            if r["split"] == "test" and int(r["label"]) == digit and r["speaker"] == spk:
                picked.append((fsdd_dir / r["path"], digit))
                break
    return picked


def spoken_digits(fsdd_dir: Path, digits: list[int], speaker: str = "jackson", take: int = 0,
                  lead: float = 1.0, gap: float = 1.5, sr: int = 32000) -> tuple[np.ndarray, list[float]]:
    """32 kHz signal: ``lead`` s of silence, then each digit followed by ``gap`` s of silence.

    Returns the signal and each digit's centre time (s).
    """
    from dymn_edge.audio import read_audio  # noqa: PLC0415

    parts = [np.zeros(int(lead * sr), np.float32)]
    centres, t = [], lead
    for d in digits:
        clip = read_audio(fsdd_dir / "recordings" / f"{d}_{speaker}_{take}.wav", sr)
        centres.append(t + len(clip) / sr / 2)
        parts += [clip, np.zeros(int(gap * sr), np.float32)]
        t += len(clip) / sr + gap
    return np.concatenate(parts), centres


@pytest.fixture(scope="session")
def child_env() -> dict[str, str]:
    """Environment for CLI subprocesses (keeps PULSE_* / VMIC_* / CI)."""
    return dict(os.environ)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private $DYMN_EDGE_CACHE holding the fused-ops library built once per test module."""
    from dymn_edge.runtime import ops  # the fused operators' builder (torch-free)

    root = tmp_path_factory.mktemp("ops_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYMN_EDGE_CACHE", str(root))
        yield root, ops.extension_path()
