"""Shared fixtures: where the reference data lives, and how a missing fixture is treated.

Reference data (``../shared`` beside the checkout, or ``$DYMN_EDGE_SHARED``) is present in
CI. Outside CI a test that needs a missing file skips with the reason; under ``CI=true`` a
missing fixture fails the test instead, so CI cannot go green by skipping. This file and
``.ci/`` are the only places that know where the fixtures are: the product takes every path
as an argument.

Torch-free tier (``.ci/run``, after the main tests): ``$DYMN_EDGE_EXPORTS`` names a folder.
With torch installed, :func:`fsdd_export` writes its files there; without torch (a fresh
``pip install .[litert,onnx]``) it hands out the files found there instead, and tests
marked ``torch`` skip.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPORTS_ENV = "DYMN_EDGE_EXPORTS"


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch_available():
        return
    skip = pytest.mark.skip(reason="needs torch (this is the torch-free runtime install)")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)


@dataclass
class StoredExport:
    """A file exported by an earlier step (the torch-free tier): what ExportResult offers."""

    path: Path
    metadata: Any
    report: dict | None
    size_bytes: int


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
    exports = os.environ.get(EXPORTS_ENV)
    if not torch_available():
        return _stored_exports(exports)
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig

    cache: dict = {}
    out_dir = Path(exports) if exports else tmp_path_factory.mktemp("fsdd-exports")
    out_dir.mkdir(parents=True, exist_ok=True)

    def get(fmt: str, precision: str = "fp32"):
        """``precision``: fp32, fp16, int8 (the format's default scheme) or full_int8."""
        key = (fmt, precision)
        if key not in cache:
            quant = calibration = None
            if precision == "full_int8":
                from dymn_edge.export.config import QuantizationConfig

                quant = QuantizationConfig(scheme="full_int8", activation_type="int8")
                calibration = fsdd_dir  # its train split (64 clips), never the test split
            # the fixture paths are passed explicitly: the exporter has no defaults that
            # point into shared/ (accuracy on the FSDD test split, FSDD train calibration)
            cfg = ExportConfig(model="dymn-s", weights=fsdd_weights, labels=fsdd_dir / "labels.csv",
                               format=fmt, precision="int8" if quant else precision,
                               quantization=quant, window_seconds=1.0,
                               output_activation="softmax", eval_dataset=fsdd_dir,
                               calibration=calibration,
                               output=out_dir / f"fsdd_dymn04_{precision}.{fmt}")
            cache[key] = export_model(cfg, progress=False)
        return cache[key]

    return get


def _stored_exports(exports: str | None):
    """``get(fmt, precision)`` over files an earlier step exported (no torch here)."""
    from dymn_edge.metadata import read_metadata

    def missing(msg: str):
        if in_ci():
            pytest.fail(msg + " (required under CI=true)")
        pytest.skip(msg)

    if not exports:
        missing(f"torch is not installed and ${EXPORTS_ENV} names no folder of exported files")

    def get(fmt: str, precision: str = "fp32") -> StoredExport:
        path = Path(exports) / f"fsdd_dymn04_{precision}.{fmt}"
        if not path.is_file():
            missing(f"{path}: not exported by the earlier step")
        meta = read_metadata(path)
        return StoredExport(path, meta, meta.validation, path.stat().st_size)

    return get
