"""The product knows nothing of the test fixtures: their paths live in tests/ and .ci/ only.

An installed wheel has no ``shared/`` folder beside it; a default that points there is a
default that works only in this repository (and a warning or a wrong error for everyone else).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("dymn_edge", "export", "runtime", "benchmarks")
FIXTURE = re.compile(r"DYMN_EDGE_SHARED|shared/|shared_dir|default_fsdd|fsdd_dymn04|"
                     r"golden_dymn04|metro_station|datasets/fsdd")


def test_no_fixture_path_in_product_code() -> None:
    hits = []
    for top in PRODUCT:
        for path in sorted((REPO / top).rglob("*")):
            if path.suffix not in (".py", ".json", ".md", ".csv", ".txt") or not path.is_file():
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if FIXTURE.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_parity_clip_is_the_generator_output() -> None:
    """The shipped clip decodes to the samples of its public-domain source (a real recording)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_parity_clip", REPO / "tests/data/make_parity_clip.py")
    make_parity_clip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_parity_clip)

    assert make_parity_clip.main(["--check"]) == 0


def test_parity_clip_loads_from_the_package() -> None:
    from dymn_edge.export.calibration import parity_clip, validation_waves
    from dymn_edge.registry import FrontendConfig

    x, sr = parity_clip()
    assert sr == 16000 and x.shape == (176000,) and 0.3 < float(np.abs(x).max()) <= 1.0
    waves, source = validation_waves(1.0, FrontendConfig(), lengths=[1.0, 1.0, 7.5])
    assert "real speech recording" in source and [len(w) for _, w in waves] == [32000, 32000, 240000]
    assert not np.array_equal(waves[0][1], waves[1][1])  # two equal lengths, different audio
