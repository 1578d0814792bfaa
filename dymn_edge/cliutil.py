"""What every command-line tool shares (torch-free): logging, errors, exit codes, Ctrl-C.

One scaffold for ``dymn-export``, ``dymn-tag``, ``dymn-listen``, ``dymn-bench``,
``dymn-events`` and ``dymn-info``:

- **Exit codes**, the same for the same outcome in every tool, with or without
  ``--verbose``: :data:`EXIT_OK` 0 done; :data:`EXIT_FAILED` 1 the tool ran and its check
  failed (an export that failed validation, the benchmark gate, files that could not be
  tagged); :data:`EXIT_USAGE` 2 a user error (bad option, missing or unreadable file, a
  model the engine rejects); :data:`EXIT_INTERRUPTED` 130 Ctrl-C.
- **Errors**: one line on stderr, ``prog: error: ...``, never a traceback; ``--verbose``
  adds the traceback through the logger (the exit code stays the same). A mistyped option
  gets the same one line (:class:`OneLineErrorParser`), not argparse's usage block.
- **Logging**: :func:`setup_logging` (WARNING, DEBUG with ``--verbose``), to stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable
from typing import NoReturn

from dymn_edge.errors import DymnEdgeError, ValidationError

__all__ = ["OneLineErrorParser", "finite", "setup_logging", "run_guarded", "exit_code",
           "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

log = logging.getLogger("dymn_edge")

EXIT_OK = 0
EXIT_FAILED = 1  # validation / gate failure, files that failed
EXIT_USAGE = 2  # a user error
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


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


def setup_logging(verbose: bool) -> None:
    """WARNING (DEBUG with ``--verbose``) to stderr; the tools' own lines stay on stdout."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def exit_code(exc: BaseException) -> int:
    """The table above, for an exception that ends a tool."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ValidationError):
        return EXIT_FAILED
    return EXIT_USAGE


def run_guarded(body: Callable[[], int], prog: str, *, verbose: bool = False) -> int:
    """Run a tool's body under the one exit-code table and error format.

    ``body`` returns its own code (0, or 1 for a failed check); a
    :class:`~dymn_edge.errors.DymnEdgeError` becomes one ``prog: error:`` line (1 for a
    ValidationError, 2 otherwise), Ctrl-C one ``prog: interrupted`` line and 130, a closed
    pipe (``| head``) a quiet 0.
    """
    try:
        return body()
    except DymnEdgeError as exc:
        if verbose:
            log.error("%s failed", prog, exc_info=True)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except BrokenPipeError:  # `dymn-tag ... | head`
        return EXIT_OK
    except KeyboardInterrupt as exc:  # what was printed is flushed; no traceback
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass
        print(f"{prog}: interrupted", file=sys.stderr)
        return exit_code(exc)
