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
