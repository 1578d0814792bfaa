"""Keep native libraries' console noise out of the user's terminal (torch-free).

litert-torch, TensorFlow's MLIR converter, absl and torchao write straight to the process's
file descriptors from C++ ("Estimated count of arithmetic ops", "All log messages before
absl::InitializeLog()"), warn at import ("Failed to load ... _C_mxfp8") and raise Python
FutureWarnings from inside torch. None of it is actionable for someone exporting a model.
:func:`converter_output` captures all of it for the duration of a conversion: with
``--verbose`` (DEBUG) it is replayed to the log afterwards; when the conversion fails, the
captured tail is logged at ERROR so the cause is never lost.

The runtime uses the same capture on stderr alone around LiteRT's interpreter creation, which
prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every load
(:func:`quiet_stderr`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

#: Python loggers of converter dependencies that warn about optional native kernels at import
NOISY_LOGGERS = ("torchao", "torchao.kernel.intmm", "absl")
TAIL_LINES = 40


@contextlib.contextmanager
def converter_output(fds: Sequence[int] = (1, 2), noisy: Sequence[str] = NOISY_LOGGERS) -> Iterator[None]:
    """Capture ``fds``, Python warnings and ``noisy`` loggers; replay on DEBUG or on failure."""
    debug = logging.getLogger("dymn_edge").isEnabledFor(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in noisy]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.ERROR))
    # Python-level writers too: where sys.stdout / sys.stderr are not the descriptors (a
    # notebook, pytest's capture), a library's tqdm bar would otherwise pass the fd capture
    py_text = io.StringIO()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile(mode="w+b") as sink, warnings.catch_warnings(), \
            (contextlib.redirect_stdout(py_text) if 1 in fds else contextlib.nullcontext()), \
            (contextlib.redirect_stderr(py_text) if 2 in fds else contextlib.nullcontext()):
        warnings.simplefilter("ignore")
        saved = [os.dup(fd) for fd in fds]
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, old in zip(fds, saved):
                os.dup2(old, fd)
                os.close(old)
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
            sink.seek(0)
            text = (sink.read().decode("utf-8", "replace") + py_text.getvalue()).strip()
            if text and failed:
                tail = "\n".join(text.splitlines()[-TAIL_LINES:])
                log.error("converter output before the failure (last %d lines):\n%s", TAIL_LINES, tail)
            elif text and debug:
                log.debug("converter output:\n%s", text)


def quiet_stderr() -> contextlib.AbstractContextManager[None]:
    """Native stderr only (stdout may carry a tool's output), no loggers silenced."""
    return converter_output(fds=(2,), noisy=())
