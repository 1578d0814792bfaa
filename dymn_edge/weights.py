"""Where checkpoint files come from: explicit path, cache directory, or a download (torch-free)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dymn_edge.errors import WeightsError
from dymn_edge.registry import ModelSpec

log = logging.getLogger(__name__)

CACHE_ENV = "DYMN_EDGE_CACHE"


def cache_dir() -> Path:
    """``$DYMN_EDGE_CACHE``, else ``$XDG_CACHE_HOME/dymn-edge``, else ``~/.cache/dymn-edge``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dymn-edge"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, *, sha256: str | None = None, progress: bool | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, with a progress bar and optional hash check.

    ``progress=None``: a bar only when standard error is a terminal (a redirected log gets no
    carriage-return stream).
    """
    if progress is None:
        progress = sys.stderr.isatty()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")[1])
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, tmp.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
            for block in iter(lambda: resp.read(1 << 16), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        if sha256 and sha256_file(tmp) != sha256:
            raise WeightsError(f"{url}: downloaded file does not match its sha256 {sha256}")
        shutil.move(str(tmp), dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def resolve_weights(spec: ModelSpec, weights: str | Path | None = None, *,
                    allow_download: bool = True, progress: bool | None = None) -> Path:
    """Find the checkpoint: explicit path, then the cache, then the release URL."""
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir():
            raise WeightsError(f"weights file {p} is a folder, not a file")
        if not p.is_file():
            raise WeightsError(f"weights file not found: {p}")
        return p
    if spec.filename is None:
        raise WeightsError(f"model '{spec.name}' has no released weights; pass --weights PATH")
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached
    if not allow_download or spec.url is None:
        raise WeightsError(f"weights for '{spec.name}' are not cached; put {spec.filename} at {cached}")
    log.info("downloading %s -> %s", spec.url, cached)
    try:
        return download(spec.url, cached, sha256=spec.sha256, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"cannot download {spec.url} ({reason}); download it elsewhere and put it at {cached} "
            f"(or set {CACHE_ENV}, or pass --weights PATH)"
        ) from exc
