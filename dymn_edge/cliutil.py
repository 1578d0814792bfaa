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
- **Logging**: :func:`setup_logging` (WARNING, DEBUG with ``--verbose``), to stderr; it also
  pins the NumPy frontend's BLAS pool to one thread (:mod:`dymn_edge.threads`).
- **Version**: :func:`add_version` gives a parser ``--version`` (``prog 0.2.0``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

import dymn_edge
from dymn_edge.errors import DymnEdgeError, ValidationError
from dymn_edge.threads import pin_blas_threads

__all__ = ["OneLineErrorParser", "add_version", "add_verbose_and_version", "finite", "positive", "non_empty", "thread_count", "MAX_THREADS",
           "check_input_file", "check_output_file", "check_writable_folder", "check_stdout",
           "setup_logging", "run_guarded", "exit_code",
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


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--version``: ``prog X.Y.Z`` from the one version source (``dymn_edge.__version__``)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {dymn_edge.__version__}")
    return parser


def add_verbose_and_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--verbose`` (debug logging, tracebacks) and ``--version``: the tail of every small tool."""
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging and tracebacks")
    return add_version(parser)


def finite(text: str) -> float:
    """argparse ``type``: a finite float (``nan`` / ``inf`` are rejected at parse time)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got '{text}'")
    return value


def positive(text: str) -> float:
    """argparse ``type``: a finite float > 0 (seconds, budgets)."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got '{text}'")
    return value


def non_empty(text: str) -> str:
    """argparse ``type`` of a path / URL / name option: ``--db ""`` (an unset shell variable) is
    refused, where a falsy value would silently mean "option not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


#: More inference threads than this is a typo, not a setting: creating 100000 threads makes an
#: engine hang for minutes before it fails (measured with ONNX Runtime), so it is refused.
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))


def thread_count(text: str) -> int:
    """argparse ``type``: an inference thread count in ``1..MAX_THREADS``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid thread count: '{text}'") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS} (4 x this "
                                         f"machine's CPUs, at least 64), got {value}")
    return value


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """An existing regular file, or one line saying what is wrong with ``path``.

    A folder where a file is expected is named as such, not reported as "not found".
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise DymnEdgeError(f"{what} {path} is a folder, not a file")
    if not p.exists():
        raise DymnEdgeError(f"{what} not found: {path}")
    if not p.is_file():
        raise DymnEdgeError(f"{what} {path} is not a regular file")
    if not os.access(p, os.R_OK):
        raise DymnEdgeError(f"{what} {path} is not readable")
    return p


def check_writable_folder(folder: str | os.PathLike, what: str,
                          error: type[DymnEdgeError] = DymnEdgeError) -> None:
    """Create and delete a probe file: permission bits lie (root, ACLs, read-only mounts)."""
    f = Path(folder)
    if f.exists() and not f.is_dir():
        raise error(f"{what}: {f} is a file, not a folder")
    if not f.is_dir():
        raise error(f"{what}: folder {f} does not exist (create it first)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dymn-edge-probe-", dir=f)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{what}: cannot write in {f} ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, what: str, suffixes: Iterable[str] = ()) -> Path:
    """An output file the tool will be able to write, checked before any work starts.

    ``suffixes`` (lower case, with the dot): the ones the writer understands.
    """
    p = Path(path).expanduser()
    allowed = tuple(suffixes)
    if p.is_dir() or str(path).endswith(os.sep):
        raise DymnEdgeError(f"{what} {path} is a folder: give a file name")
    if allowed and p.suffix.lower() not in allowed:
        raise DymnEdgeError(f"{what} {path}: the file name must end in {' or '.join(allowed)}")
    check_writable_folder(p.parent, f"{what} {path}")
    if p.exists() and not os.access(p, os.W_OK):
        raise DymnEdgeError(f"{what} {path}: the file exists and cannot be overwritten")
    return p


def check_stdout() -> None:
    """A closed standard output (``prog >&-``) is refused before the work: Python sets
    ``sys.stdout`` to None, silently drops ``print`` and fails on the first ``write``."""
    if sys.stdout is None:
        raise DymnEdgeError("standard output is closed; redirect it to a file or /dev/null")


def setup_logging(verbose: bool) -> None:
    """WARNING (DEBUG with ``--verbose``) to stderr; the tools' own lines stay on stdout.

    The first call of every tool: it also pins the NumPy frontend's BLAS pool to one thread
    unless the user set a thread variable (:func:`dymn_edge.threads.pin_blas_threads`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    pin_blas_threads()


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
    pipe (``| head``) a quiet 0. A closed standard output (``>&-``) is refused before the
    work: Python would silently drop ``print`` and fail on the first ``write``.
    """
    try:
        check_stdout()
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
