"""dymn-edge: DyMN audio taggers from the lab to the edge.

Importing this package never imports torch: the torch model lives in
:mod:`dymn_edge.models` and is imported only by code that needs it.

``__version__`` has one source, ``version`` in ``pyproject.toml``: an installed copy reads it
from its distribution's metadata; a source tree that was never installed (``PYTHONPATH=.``)
reads the ``pyproject.toml`` beside the package.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path


def _source_tree_version() -> str:
    """``version = "..."`` of the checkout's pyproject.toml, or ``0+unknown`` without one."""
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    except OSError:
        return "0+unknown"
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return m.group(1) if m else "0+unknown"


try:
    __version__ = importlib.metadata.version("dymn-edge")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = _source_tree_version()

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
