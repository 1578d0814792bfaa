"""Shared fixtures: where the reference data lives, and how a missing fixture is treated.

Reference data (``../shared`` beside the checkout, or ``$DYMN_EDGE_SHARED``) is present in
CI. Outside CI a test that needs a missing file skips with the reason; under ``CI=true`` a
missing fixture fails the test instead, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("DYMN_EDGE_SHARED", REPO.parent / "shared")).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_file(rel: str) -> Path:
    """Path of a file under shared/, or skip (outside CI) / fail (in CI) when it is missing."""
    path = shared_root() / rel
    if not path.exists():
        msg = f"reference fixture missing: {path}"
        if in_ci():
            pytest.fail(msg + " (required under CI=true)")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_root()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_file("reference")


@pytest.fixture(scope="session")
def golden_io(reference_dir: Path):
    import numpy as np

    return dict(np.load(require_file("reference/golden_dymn04_io.npz")))


@pytest.fixture(scope="session")
def metro_wav() -> Path:
    return require_file("reference/metro_station-paris.wav")


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    return require_file("datasets/fsdd")


@pytest.fixture(scope="session")
def fsdd_weights() -> Path:
    return require_file("reference/fsdd_dymn04.pt")


@pytest.fixture(scope="session")
def fsdd_export(tmp_path_factory: pytest.TempPathFactory, fsdd_weights: Path, fsdd_dir: Path):
    """``get(fmt, precision) -> ExportResult``: the trained FSDD DyMN-S exported by the project.

    One cache per test session, shared by the export, runtime and benchmark tests, so each
    (format, precision) is converted once (conversions dominate the test time).
    """
    try:
        from dymn_edge.export.api import export_model
        from dymn_edge.export.config import ExportConfig
    except Exception as exc:  # ImportError, or torch missing underneath
        msg = f"dymn_edge.export is not importable ({type(exc).__name__}: {exc}); cannot build test models"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    cache: dict = {}
    out_dir = tmp_path_factory.mktemp("fsdd-exports")

    def get(fmt: str, precision: str = "fp32"):
        """``precision``: fp32, fp16, int8 (the format's default scheme) or full_int8."""
        key = (fmt, precision)
        if key not in cache:
            quant = None
            if precision == "full_int8":
                from dymn_edge.export.config import QuantizationConfig

                quant = QuantizationConfig(scheme="full_int8", activation_type="int8")
            cfg = ExportConfig(model="dymn-s", weights=fsdd_weights, labels=fsdd_dir / "labels.csv",
                               format=fmt, precision="int8" if quant else precision,
                               quantization=quant, window_seconds=1.0,
                               output_activation="softmax",
                               output=out_dir / f"fsdd_dymn04_{precision}.{fmt}")
            cache[key] = export_model(cfg, progress=False)
        return cache[key]

    return get
