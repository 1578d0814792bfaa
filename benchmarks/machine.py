"""The machine a benchmark ran on, and a reference workload that measures it.

Latencies from two machines (or two CI runs on a shared runner) cannot be compared directly.
Every benchmark therefore times a fixed float32 GEMM (NumPy / OpenBLAS) in the same job,
interleaved with the artifacts, with the same thread count: results are expressed as a ratio
to it (``latency / gemm time``), which cancels most of the machine's speed and its momentary
load, and the GEMM's MAC/s gives the "achieved fraction of the machine's MAC throughput"
(model MACs / latency / GEMM MAC/s).
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np

from dymn_edge.metadata import installed_versions

log = logging.getLogger(__name__)

#: Reference GEMM size: (n x n) @ (n x n) float32, n^3 MACs (134 M for 512): a few ms on one
#: modern core, long enough to time, short enough to interleave with the artifacts.
GEMM_N = 512

_TOOLS = ("dymn-edge", "numpy", "scipy", "onnx", "onnxruntime", "ai-edge-litert", "litert-torch",
          "torch", "matplotlib")

#: Environment variables that pin the thread pools of NumPy's BLAS and PyTorch (set in the
#: worker subprocesses before their first import).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def tool_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers (absent ones left out)."""
    return {"python": platform.python_version(), **installed_versions(_TOOLS)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 2)
    except OSError:
        pass
    return None


def default_threads() -> tuple[tuple[int, ...], str]:
    """``dymn-bench``'s ``--threads`` when none is given: what this machine can give now.

    Always 1 thread; plus the physical core count when those cores are idle (1-minute load
    average at most half a core above zero for each of them). On a machine running other
    jobs a many-thread wall clock times the other jobs (measured: eager PyTorch 842 ms at 2
    threads vs 19 ms at 1 on a loaded 2-core box), so then only 1 thread is timed. Returns
    the counts and the sentence the table header shows.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    physical = usable
    try:
        import psutil  # noqa: PLC0415  (optional: the [bench] extra)

        physical = min(usable, psutil.cpu_count(logical=False) or usable)
    except ImportError:
        pass
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    if physical >= 2 and load is not None and load <= 0.5 * physical:
        return (1, physical), (f"default threads 1,{physical}: {physical} idle physical cores "
                               f"(load {load:.1f})")
    why = (f"load {load:.1f} on {usable} CPUs" if load is not None and physical >= 2
           else f"{physical} physical core(s)")
    return (1,), f"default threads 1: {why}; --threads N,M times more"


def machine_info() -> dict[str, Any]:
    """CPU, cores (total and usable by this process), memory, OS, Python, load average."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "mem_total_gb": _mem_total_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "hostname": platform.node(),
        "loadavg": load,
        "ci": os.environ.get("CI", "").lower() in ("1", "true", "yes"),
    }


class GemmWorkload:
    """The reference workload: one float32 (n x n) @ (n x n) product per call."""

    def __init__(self, n: int = GEMM_N, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.macs = n ** 3
        self.a = rng.standard_normal((n, n), dtype=np.float32)
        self.b = rng.standard_normal((n, n), dtype=np.float32)
        self.c = np.empty((n, n), dtype=np.float32)

    def run(self) -> None:
        np.matmul(self.a, self.b, out=self.c)


def gemm_macs_per_s(budget_s: float = 0.5, n: int = GEMM_N) -> dict[str, float]:
    """Median GEMM time and MAC/s in this process (its current BLAS thread setting)."""
    w = GemmWorkload(n)
    w.run()  # warm-up: page in, spin up the BLAS threads
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 10000):
        t0 = time.perf_counter()
        w.run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n": n, "macs": w.macs, "median_s": med, "macs_per_s": w.macs / med,
            "runs": len(times)}
