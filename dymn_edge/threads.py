"""One BLAS thread for the NumPy frontend, unless the user chose otherwise (torch-free).

The log-mel frontend's matmuls are small (one window's mel bank): a multi-threaded OpenBLAS
pool spends more time waking and spinning its threads than computing, and on a busy machine
it waits for cores other jobs hold. Measured on a 2-core box under load: archive tagging of
the FSDD folder 121 s with OpenBLAS's default pool vs 38 s with one thread, and the frontend
31 ms vs 2.5 ms CPU per 1 s window. The engines (ONNX Runtime, LiteRT, torch) keep their own
``--threads``; this only pins the BLAS pool NumPy loaded.

Every tool calls :func:`pin_blas_threads` once at start (through
:func:`dymn_edge.cliutil.setup_logging`). A user who set ``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` keeps that setting.
"""

from __future__ import annotations

import logging
import os

from threadpoolctl import threadpool_limits

__all__ = ["pin_blas_threads", "USER_THREAD_VARIABLES"]

log = logging.getLogger(__name__)

#: Environment variables that mean "the user chose the BLAS thread count".
USER_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_limiter: threadpool_limits | None = None  # kept alive: the limit holds while it exists


def pin_blas_threads(threads: int = 1) -> bool:
    """Limit the loaded BLAS libraries to ``threads`` threads; False when the user set one of
    :data:`USER_THREAD_VARIABLES` (their choice is left alone).

    ``OPENBLAS_NUM_THREADS`` is also set in this process's environment, so worker processes
    started later (``dymn-tag --workers``) begin with the same pool size.
    """
    global _limiter
    if _limiter is not None:  # already pinned by this process (its own OPENBLAS_NUM_THREADS)
        return True
    chosen = {k: os.environ[k] for k in USER_THREAD_VARIABLES if os.environ.get(k, "").strip()}
    if chosen:
        log.debug("BLAS threads left as the environment sets them: %s", chosen)
        return False
    _limiter = threadpool_limits(limits=threads, user_api="blas")
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    log.debug("BLAS pool of the NumPy frontend pinned to %d thread(s)", threads)
    return True
