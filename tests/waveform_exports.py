"""The FSDD DyMN-S exported with ``--waveform``, once per test session (export and runtime tests).

A module-level cache (not a conftest fixture): the waveform tests of tests/export and
tests/runtime share the files, and each conversion costs a minute on 2 cores. The log-mel
twin comes from the ``fsdd_export`` fixture of tests/conftest.py.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

from conftest import in_ci, require_file

_CACHE: dict[str, object] = {}
_DIR: list[Path] = []


def fsdd_waveform_export(fmt: str):
    """ExportResult of the FSDD DyMN-S as a validated fp32 ``--waveform`` file (1 s window).

    Files exported earlier can be reused to iterate quickly: DYMN_EDGE_WAVEFORM_MODELS=DIR
    holding fsdd_dymn04_waveform.<fmt> (never in CI: there the exporter runs).
    """
    reuse = os.environ.get("DYMN_EDGE_WAVEFORM_MODELS")
    if fmt not in _CACHE and reuse and not in_ci() and (Path(reuse) / f"fsdd_dymn04_waveform.{fmt}").is_file():
        from dymn_edge.metadata import read_metadata

        path = Path(reuse) / f"fsdd_dymn04_waveform.{fmt}"
        meta = read_metadata(path)
        _CACHE[fmt] = SimpleNamespace(path=path, metadata=meta, report=meta.validation)
    if fmt not in _CACHE:
        from dymn_edge.export.api import export_model
        from dymn_edge.export.config import ExportConfig

        weights = require_file("reference/fsdd_dymn04.pt")
        fsdd = require_file("datasets/fsdd")
        if not _DIR:
            _DIR.append(Path(tempfile.mkdtemp(prefix="dymn-edge-waveform-")))
        cfg = ExportConfig(model="dymn-s", weights=weights, labels=fsdd / "labels.csv", format=fmt,
                           window_seconds=1.0, output_activation="softmax", waveform=True,
                           output=_DIR[0] / f"fsdd_dymn04_waveform.{fmt}")
        _CACHE[fmt] = export_model(cfg, progress=False)
    return _CACHE[fmt]


def fsdd_split(split: str = "test") -> list[tuple[Path, int]]:
    """(path, digit) of every clip of an FSDD split, in split.csv order."""
    fsdd = require_file("datasets/fsdd")
    rows = csv.DictReader((fsdd / "split.csv").open())
    return [(fsdd / r["path"], int(r["label"])) for r in rows if r["split"] == split]
