"""dymn-edge: DyMN audio taggers from the lab to the edge.

Importing this package never imports torch: the torch model lives in
:mod:`dymn_edge.models` and is imported only by code that needs it.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
