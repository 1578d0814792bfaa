"""Small pieces every command-line tool shares (torch-free).

A user who mistypes an option gets one line on stderr, the same shape as every other error
(``prog: error: ...``), not argparse's usage block; ``--help`` still shows everything.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

__all__ = ["OneLineErrorParser", "finite", "EXIT_USAGE"]

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def finite(text: str) -> float:
    """argparse ``type``: a finite float (``nan`` / ``inf`` are rejected at parse time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value
