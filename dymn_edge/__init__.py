"""dymn-edge: DyMN audio taggers from the lab to the edge.

Importing this package never imports torch: the torch model lives in
:mod:`dymn_edge.models` and is imported only by code that needs it.

``__version__`` has one source, ``version`` in ``pyproject.toml``: a checkout (editable install
or ``PYTHONPATH=.``) reads the ``pyproject.toml`` beside the package, so a stale ``*.egg-info``
or an editable install made before a version bump cannot disagree with it; an installed wheel
reads its distribution metadata.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path


def _source_tree_version() -> str | None:
    """``version`` of the checkout's pyproject.toml, None outside a dymn-edge checkout."""
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    except OSError:
        return None
    if not re.search(r'^name\s*=\s*"dymn-edge"', text, re.MULTILINE):
        return None
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return m.group(1) if m else None


def _version() -> str:
    source = _source_tree_version()
    if source is not None:
        return source
    try:
        return importlib.metadata.version("dymn-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
