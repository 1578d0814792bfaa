"""Running tasks on Dask: the scheduler address, the cluster, submission and retries."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError, one_line
from dymn_edge.runtime.archive.options import PIP_CLUSTER, ArchiveOptions, Task
from dymn_edge.runtime.archive.tasks import TaskResult, collect, crash_result, dask_task

log = logging.getLogger(__name__)

__all__ = ["SCHEDULER_SCHEMES", "check_scheduler_address", "cluster", "probe_scheduler", "run_dask"]

#: Address schemes of a Dask scheduler (``distributed.comm`` backends).
SCHEDULER_SCHEMES = ("tcp", "tls", "inproc", "ucx")


#: Seconds to wait for a TCP connection to a scheduler before Dask's own (longer) handshake.
_PROBE_TIMEOUT_S = 5.0


#: Tasks in flight per worker thread: enough to keep workers busy, few enough to bound memory.
_INFLIGHT_PER_THREAD = 3


#: Re-runs of a task whose result or input was lost with a worker (not a failure of its files).
_LOST_RETRIES = 3


def check_scheduler_address(address: str) -> tuple[str, str | None, int | None]:
    """``(scheme, host, port)`` of a scheduler address, or one line saying what is wrong.

    ``tcp://`` / ``tls://`` addresses and a bare ``HOST:PORT`` (tcp) need a port;
    ``inproc://`` and ``ucx://`` are passed to Dask as they are (host and port None).
    """
    scheme, sep, rest = address.strip().partition("://")
    if not sep:
        scheme, rest = "tcp", address.strip()
    scheme = scheme.lower()
    if scheme not in SCHEDULER_SCHEMES:
        raise DymnEdgeError(f"--scheduler {address}: unknown scheme '{scheme}://' (use "
                            + ", ".join(f"{s}://" for s in SCHEDULER_SCHEMES) + " or HOST:PORT)")
    if scheme not in ("tcp", "tls"):
        if not rest:
            raise DymnEdgeError(f"--scheduler {address}: no address after {scheme}://")
        return scheme, None, None
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")  # [::1]:8786
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DymnEdgeError(f"--scheduler {address}: expected {scheme}://HOST:PORT (e.g. tcp://head:8786)")
    return scheme, host, int(port)


def probe_scheduler(address: str) -> None:
    """A quick TCP connect: a refused or unroutable address is one line in seconds, not
    after Dask's 30 s of connection retries."""
    scheme, host, port = check_scheduler_address(address)
    if host is None or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as exc:
        raise DymnEdgeError(f"cannot connect to the Dask scheduler {address}: "
                            f"{exc.strerror or one_line(exc, with_type=True)}") from None


@contextlib.contextmanager
def cluster(workers: int | None, scheduler: str | None, client: Any) -> Iterator[Any]:
    """The run's Dask client (None: the plain loop), closed afterwards if this run made it.

    ``client``: the caller's, used as it is. ``scheduler``: probed, then connected to.
    ``workers``: a local cluster (the caller passes None when there is no work).
    """
    if client is not None:
        yield client
        return
    if not scheduler and not workers:
        yield None
        return
    try:
        from distributed import Client, LocalCluster  # noqa: PLC0415
    except ImportError as exc:
        raise DymnEdgeError(f"--workers / --scheduler need Dask: {PIP_CLUSTER}") from exc
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # distributed logs every cluster start and stop at INFO on its own handler
        logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    t_start = time.perf_counter()
    if scheduler:
        try:
            own = Client(scheduler, timeout="30s")
        except Exception as exc:  # (OSError, TimeoutError, a comm's ValueError)
            raise DymnEdgeError(f"cannot connect to the Dask scheduler {scheduler}: "
                                f"{one_line(exc, with_type=True)}") from None
    else:
        cluster = _local_cluster(workers or 1, LocalCluster)
        own = Client(cluster)
    try:
        log.info("Dask: %s, ready after %.1f s", own.scheduler.address, time.perf_counter() - t_start)
        yield own
    finally:
        own.close()
        if cluster is not None:
            cluster.close()


def run_dask(todo: list[Task], accept: Callable[[Task, TaskResult], None], model: Path,
              model_bytes: bytes, digest: str, opts: ArchiveOptions, client: Any) -> int:
    """Run ``todo`` on a Dask cluster; returns the number of worker threads used."""
    from distributed import as_completed  # noqa: PLC0415

    # One-thread engines on workers unless asked: parallelism comes from the workers.
    wopts = opts if opts.threads else ArchiveOptions(**{**asdict(opts), "threads": 1})
    threads = max(1, sum(client.nthreads().values()))
    log.info("Dask: %d worker threads", threads)
    model_ref = [client.scatter(model_bytes, broadcast=True, hash=True)]
    pending: Iterator[Task] = iter(todo)
    by_key: dict[str, tuple[Task, int]] = {}
    lost: dict[str, int] = {}
    seq = itertools.count()
    ac = as_completed(loop=client.loop)  # not the default client's loop (tests run two)

    def submit(task: Task, attempt: int = 0) -> None:
        if model_ref[0].status != "finished":  # every worker holding it died
            log.warning("the model file was lost with its workers; shipping it again")
            model_ref[0] = client.scatter(model_bytes, broadcast=True, hash=True)
        fut = client.submit(dask_task, model_ref[0], model.name, digest, wopts, task,
                            key=f"dymn-tag-{task.part}-{attempt}-{next(seq)}", pure=False)
        by_key[fut.key] = (task, attempt)
        ac.add(fut)

    for task in _take(pending, threads * _INFLIGHT_PER_THREAD):
        submit(task)
    splits: dict[int, list[TaskResult | None]] = {}
    for fut in ac:
        task, attempt = by_key.pop(fut.key)
        res, exc = _outcome(fut)
        fut.release()
        if res is not None:
            collect(task, res, splits, accept, opts)
        elif isinstance(exc, DymnEdgeError):  # e.g. a worker without the engine: every task would fail
            raise DymnEdgeError(f"on a Dask worker: {exc}") from exc
        elif not _is_task_failure(exc) and lost.get(task.part, 0) < _LOST_RETRIES:
            # the result or an input went with a dead worker, or the future was cancelled:
            # nothing is known against the files, so the same task runs again
            lost[task.part] = lost.get(task.part, 0) + 1
            log.warning("task %s lost (%s); running it again", task.part, one_line(exc, with_type=True))
            submit(task, attempt)
        elif len(task.files) > 1 and attempt == 0:
            log.warning("task of %d files failed on its workers (%s); retrying file by file",
                        len(task.files), one_line(exc, with_type=True))
            splits[task.index] = [None] * len(task.files)
            for k, f in enumerate(task.files):
                submit(Task(task.index, f"{task.part}#{k}", (f,)), attempt=1)
        else:
            res = crash_result(task, f"worker died or failed on this file: {one_line(exc, with_type=True)}", opts)
            collect(task, res, splits, accept, opts)
        for nxt in _take(pending, 1):
            submit(nxt)
    return threads


def _outcome(fut: Any) -> tuple[TaskResult | None, BaseException | None]:
    """(result, None) or (None, why): a finished future's result can still be lost with its
    worker before it is fetched, and a cancelled future raises instead of returning."""
    try:
        if fut.status == "finished":
            return fut.result(), None
        return None, fut.exception()
    except DymnEdgeError as exc:
        return None, exc
    except Exception as exc:  # (CancelledError, lost data, a closed comm)
        return None, exc


def _is_task_failure(exc: BaseException | None) -> bool:
    """True when the task itself failed (raised, or killed its workers), not its transport."""
    if exc is None:
        return False
    from distributed.scheduler import KilledWorker  # noqa: PLC0415

    if isinstance(exc, KilledWorker):
        return True
    cancelled = type(exc).__name__ in ("CancelledError", "FutureCancelledError")
    return not cancelled and not isinstance(exc, (OSError, TimeoutError))


def _local_cluster(workers: int, local_cluster: Any) -> Any:
    """One-thread worker processes, without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

    That setting (a default of the nanny) turns off glibc's adaptive mmap threshold, so every
    log-mel frame buffer (~0.8 MB) is a fresh mmap + page faults: measured here, it doubles
    the CPU time per file of the NumPy frontend (1.61 s vs 0.78 s per 100 FSDD files).
    BLAS stays at one thread (the nanny's OPENBLAS/OMP/MKL_NUM_THREADS=1).
    """
    import dask  # noqa: PLC0415

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # Dask's own log lines in the workers: a heartbeat racing the shutdown prints a traceback
    # ("Failed to communicate with scheduler during heartbeat") into a run that succeeded.
    # Lost workers and failed tasks are reported by us (error rows, the summary), so the
    # workers speak only on CRITICAL unless --verbose asked for debug logging.
    quiet = logging.WARNING if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):  # read once per nanny
        return local_cluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None, silence_logs=quiet)


def _take(it: Iterator[Task], n: int) -> list[Task]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out
