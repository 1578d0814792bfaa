"""Re-use of files ``dymn-bench`` exported before.

Why: exporting every variant of DyMN-M takes the better part of an hour on a loaded 2-core
box, while timing them takes minutes. A file is re-used only when everything that shapes it
is unchanged: the weights (sha256, or ``random-init seed 0``), model, format, precision,
window, strategy, for calibrated int8 the calibration (:func:`calibration_id`: the folder's
audio files by name, size and mtime, the clip count, the quantization recipe), the dymn-edge version, the versions of the converters, and a hash of the
exporter's source (``dymn_edge/models/*.py`` - the patcher and the modules it rewrites -,
``dymn_edge/arch.py`` and ``export/*.py``), so any edit of the export path invalidates every entry.

Layout: ``<root>/<model>-<format>-<precision>-<key12>/`` holds the file and ``entry.json``
(the full key and the benchmark row of the export). ``entry.json`` is written last, so an
interrupted export is never re-used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any
import dymn_edge
from dymn_edge.datasets import AUDIO_SUFFIXES
from dymn_edge.weights import cache_dir
from importlib.metadata import PackageNotFoundError, version
from dymn_edge.weights import sha256_file

log = logging.getLogger(__name__)

ENTRY = "entry.json"
CACHE_SCHEMA = 1
#: distributions whose version changes the bytes an export writes
CONVERTERS = ("torch", "onnx", "onnxruntime", "onnxsim", "litert-torch", "ai-edge-litert")


def default_root() -> Path:
    """``$DYMN_EDGE_CACHE/bench`` (see :func:`dymn_edge.weights.cache_dir`)."""
    return cache_dir() / "bench"


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # imports the parent only, not the package itself
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


@lru_cache(maxsize=1)
def exporter_source_hash() -> str:
    """sha256 over the exporter's Python sources (path and content, sorted by path)."""
    h = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for pkg in ("dymn_edge.models", "dymn_edge.export"):
        folder = _package_dir(pkg)
        if folder is not None:
            files += [(f"{pkg}/{f.name}", f) for f in sorted(folder.glob("*.py"))]
    arch = importlib.util.find_spec("dymn_edge.arch")  # the export forms per conv live there
    if arch is not None and arch.origin:
        files.append(("dymn_edge/arch.py", Path(arch.origin)))
    for name, f in files:
        h.update(f"{name}\0".encode())
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


@lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"dymn-edge": dymn_edge.__version__}
    for dist in CONVERTERS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


@lru_cache(maxsize=16)
def _weights_id(weights: str | None) -> str:
    if weights is None:
        return "random-init seed 0"

    return "sha256:" + sha256_file(weights)


def calibration_id(folder: str | Path, count: int, recipe: dict[str, Any]) -> dict[str, Any]:
    """What shapes a calibrated int8 file besides the model: the audio and the recipe.

    The folder is identified by its audio files (relative path, size, mtime; not the folder's
    name, which may move), so adding, removing or editing a clip changes the key without
    hashing gigabytes of audio. ``recipe``: the quantization settings (scheme, types,
    reduce_range, calibration method, context path), JSON-able.
    """
    root = Path(folder).expanduser().resolve()
    h = hashlib.sha256()
    n = 0
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n += 1
    return {"audio_files": n, "audio_sha256": h.hexdigest(), "count": int(count), "recipe": recipe}


def cache_key(*, model: str, fmt: str, precision: str, weights: str | None,
              window_s: float | None, strategy: str | None = None,
              activation: str | None = None, layout: str | None = None,
              calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that shapes an exported file (a JSON-able dict).

    ``calibration``: :func:`calibration_id` for calibrated int8 (static QDQ, full int8), else None.
    """
    return {
        "schema": CACHE_SCHEMA, "weights": _weights_id(weights), "model": model, "format": fmt,
        "precision": precision, "window_s": window_s, "strategy": strategy, "layout": layout,
        "activation": activation, "calibration": calibration, "versions": _versions(),
        "exporter_source_sha256": exporter_source_hash(),
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def entry_dir(root: Path, key: dict[str, Any]) -> Path:
    """The folder of one cache entry (created on demand by the caller)."""
    return root / f"{key['model']}-{key['format']}-{key['precision']}-{_digest(key)[:12]}"


def lookup(root: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached benchmark row for ``key``, or ``None`` (missing, partial or stale entry)."""
    d = entry_dir(root, key)
    try:
        entry = json.loads((d / ENTRY).read_text())
    except (OSError, ValueError):
        return None
    row = entry.get("row") or {}
    path = d / str(row.get("file", ""))
    if entry.get("key") != key or not row.get("file") or not path.is_file():
        return None
    if path.stat().st_size != row.get("file_bytes"):
        log.warning("cache entry %s: file size changed, exporting again", d)
        return None
    return {**row, "path": str(path)}


def store(root: Path, key: dict[str, Any], row: dict[str, Any]) -> None:
    """Record a finished export whose file already lies in :func:`entry_dir`."""
    d = entry_dir(root, key)
    path = Path(row["path"])
    saved = {k: v for k, v in row.items() if k != "path"}
    saved.update(file=path.name, file_bytes=path.stat().st_size)
    tmp = d / (ENTRY + ".tmp")
    tmp.write_text(json.dumps({"key": key, "row": saved}, indent=1, default=str) + "\n")
    tmp.replace(d / ENTRY)
