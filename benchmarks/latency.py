"""Latency, load time and peak memory of model artifacts, each in its own subprocess.

Why subprocesses: peak resident memory (``ru_maxrss``) is only meaningful for a process
that holds one artifact, and thread pools (ONNX Runtime, LiteRT, OpenBLAS, torch) are pinned
per process. Why interleaving: on a shared machine the load changes by the second; running
A B C A B C ... (a chunk of ~0.1 s each) lets the noise hit every artifact alike, and the
reference GEMM (:mod:`dymn_edge.benchmarks.machine`) is one more participant of the same
rotation, so ``latency / GEMM time`` is a ratio taken under the same conditions.

Protocol: the parent starts ``python -m dymn_edge.benchmarks.latency --worker SPEC`` per
artifact and thread count; the worker loads the artifact (timed), answers one JSON line, then
runs commands (``run`` frames n / ``stats`` / ``quit``) read line by line from stdin. Model
files run through :func:`dymn_edge.runtime.engines.load_engine`, exactly what ships; the
PyTorch reference row builds the training-faithful model with
:func:`dymn_edge.models.create_model` and runs it eagerly under ``torch.inference_mode``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dymn_edge.benchmarks.machine import THREAD_ENV, GemmWorkload
from dymn_edge.errors import DymnEdgeError
from dymn_edge.frontend import frames_for_seconds

log = logging.getLogger(__name__)

CHUNK_S = 0.1  # target duration of one interleaved chunk of runs
WORKER_TIMEOUT_S = 600.0


@dataclass
class ArtifactSpec:
    """What a worker loads: a model file (``engine``), the eager model (``torch``) or the GEMM."""

    name: str
    kind: str  # "engine" | "torch" | "gemm"
    path: str | None = None
    model: str | None = None
    weights: str | None = None
    random_init: bool = False
    num_classes: int | None = None
    engine: str | None = None  # a name of the runtime's engine table; None: auto

    def __post_init__(self) -> None:
        if self.kind not in ("engine", "torch", "gemm"):
            raise ValueError(f"unknown artifact kind '{self.kind}'")


@dataclass
class LatencyStats:
    """Timings of one artifact at one input length and thread count (milliseconds)."""

    seconds: float
    frames: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    warmup_ms: float
    # median thread CPU time (1-thread runs only): on a shared, loaded box the wall clock also
    # counts time the thread waited for a core; its CPU time does not, so ratios use this
    cpu_median_ms: float | None = None

    @classmethod
    def from_times(cls, seconds: float, frames: int, times_s: list[float],
                   warmup_s: list[float], cpu_s: list[float] | None = None) -> "LatencyStats":
        ms = sorted(t * 1e3 for t in times_s)
        cpu = statistics.median(t * 1e3 for t in cpu_s) if cpu_s else None
        return cls(seconds, frames, len(ms), statistics.median(ms), percentile(ms, 90),
                   statistics.fmean(ms), ms[0], sum(warmup_s) * 1e3, cpu)

    @property
    def steady_ms(self) -> float:
        """The median to compare across artifacts: CPU time where measured, else wall."""
        return self.cpu_median_ms if self.cpu_median_ms is not None else self.median_ms


@dataclass
class WorkerResult:
    """One artifact at one thread count: load, memory, and timings per input length."""

    name: str
    kind: str
    threads: int
    load_s: float | None = None
    rss_before_load_mb: float | None = None
    peak_rss_mb: float | None = None
    fixed_frames: int | None = None
    latency: dict[str, LatencyStats | None] = field(default_factory=dict)  # key: seconds as str
    error: str | None = None

    @property
    def model_rss_mb(self) -> float | None:
        """Peak RSS above what the process held before loading (imports included before)."""
        if self.peak_rss_mb is None or self.rss_before_load_mb is None:
            return None
        return self.peak_rss_mb - self.rss_before_load_mb

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_rss_mb"] = self.model_rss_mb
        return d


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (NumPy's default method)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def seconds_key(seconds: float) -> str:
    """Dictionary key of an input length: ``"1"``, ``"10"``, ``"2.5"``."""
    return f"{seconds:g}"


# ---------------------------------------------------------------------------------------
# Worker side


def _rss_mb() -> float:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak RSS of this process image.

    ``VmHWM`` first: ``ru_maxrss`` survives ``execve`` and would report the parent's peak at
    fork time (the benchmark parent holds torch: ~1 GB in every worker).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB else


class _Runner:
    """Loads one artifact; ``run(frames)`` performs one timed-worthy inference."""

    def __init__(self, spec: ArtifactSpec, threads: int) -> None:
        self.spec, self.threads = spec, threads
        self.fixed_frames: int | None = None
        self._inputs: dict[int, Any] = {}
        self._fn: Any = None

    def preload_libraries(self) -> None:
        """Import the engine libraries first, so the RSS before load excludes them."""
        import numpy  # noqa: F401, PLC0415

        if self.spec.kind == "torch":
            import torch  # noqa: PLC0415

            torch.set_num_threads(self.threads)
            import dymn_edge.models  # noqa: F401, PLC0415
        elif self.spec.kind == "engine":
            import dymn_edge.runtime.engines  # noqa: F401, PLC0415

            for mod in ("onnxruntime", "ai_edge_litert.interpreter", "openvino"):
                try:
                    __import__(mod)
                except ImportError:
                    pass

    def load(self) -> None:
        s = self.spec
        if s.kind == "gemm":
            w = GemmWorkload()
            self._fn = lambda _x: w.run()
        elif s.kind == "torch":
            import torch  # noqa: PLC0415

            from dymn_edge.models import create_model  # noqa: PLC0415

            model = create_model(s.model or "dymn-s", weights=s.weights,
                                 pretrained=not s.random_init, num_classes=s.num_classes,
                                 allow_download=False)

            def run_torch(x: np.ndarray) -> None:
                with torch.inference_mode():
                    model(torch.from_numpy(x))

            self._fn = run_torch
        else:
            from dymn_edge.runtime.engines import load_engine  # noqa: PLC0415

            engine = load_engine(s.path, threads=self.threads, engine=s.engine or "auto")
            self.fixed_frames = engine.fixed_frames
            self._waveform = engine.takes_waveform
            self._fn = engine.run

    def input(self, frames: int) -> Any:
        if frames not in self._inputs and getattr(self, "_waveform", False):
            # the waveform whose log-mel has ``frames`` frames (1 + (N - 1) // hop), speech-level
            self._inputs[frames] = (np.random.default_rng(frames).standard_normal((1, frames * 320))
                                    * 0.1).astype(np.float32)
        if frames not in self._inputs:
            rng = np.random.default_rng(frames)
            # log-mel-like values: (log(mel) + 4.5) / 5 lies roughly in [-1.5, 1.5]
            self._inputs[frames] = (rng.standard_normal((1, 1, 128, frames)) * 0.5
                                    ).astype(np.float32)
        return self._inputs[frames]

    def timed(self, frames: int, n: int) -> tuple[list[float], list[float]]:
        """Wall and thread-CPU seconds of ``n`` runs (the CPU time means something only when
        the engine runs in the calling thread: 1-thread workers)."""
        x = self.input(frames)
        fn = self._fn
        wall, cpu = [], []
        for _ in range(n):
            c0, t0 = time.thread_time(), time.perf_counter()
            fn(x)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        return wall, cpu


def _worker_main(spec_json: str) -> int:
    """Entry of a worker subprocess (``--worker SPEC``): JSON lines on stdin / stdout."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = json.loads(spec_json)
    threads = int(args.pop("threads"))
    spec = ArtifactSpec(**args)

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    runner = _Runner(spec, threads)
    try:
        runner.preload_libraries()
        rss0 = _rss_mb()
        t0 = time.perf_counter()
        runner.load()
        load_s = time.perf_counter() - t0
    except Exception as exc:  # reported to the parent, which marks the artifact failed
        send({"ok": False, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:400]})
        return 1
    send({"ok": True, "load_s": load_s, "rss_before_load_mb": rss0,
          "fixed_frames": runner.fixed_frames})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "run":
            try:
                times, cpu = runner.timed(int(cmd["frames"]), int(cmd["n"]))
            except Exception as exc:  # an input the artifact rejects
                send({"ok": False, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:400]})
                continue
            send({"ok": True, "times": times, "cpu": cpu if threads == 1 else None})
        elif op == "stats":
            send({"ok": True, "peak_rss_mb": _peak_rss_mb(), "rss_mb": _rss_mb()})
        else:
            break
    return 0


# ---------------------------------------------------------------------------------------
# Parent side


class Worker:
    """Handle of one worker subprocess."""

    def __init__(self, spec: ArtifactSpec, threads: int) -> None:
        self.spec, self.threads = spec, threads
        env = dict(os.environ)
        for k in THREAD_ENV:
            env[k] = str(threads)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        payload = json.dumps({**asdict(spec), "threads": threads})
        # stderr to a file, not a pipe: a chatty library would fill a pipe and block the worker
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dymn_edge.benchmarks.latency", "--worker", payload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env=env, bufsize=1)
        self.result = WorkerResult(spec.name, spec.kind, threads)
        hello = self._read()
        if hello.get("ok"):
            self.result.load_s = hello["load_s"]
            self.result.rss_before_load_mb = hello["rss_before_load_mb"]
            self.result.fixed_frames = hello.get("fixed_frames")
        else:
            self.result.error = hello.get("error", "worker failed")
            self.close()

    @property
    def alive(self) -> bool:
        return self.result.error is None and self.proc.poll() is None

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.seek(0)
            err = self._stderr.read()
            tail = " ".join(err.strip().splitlines()[-1:])[:300]
            return {"ok": False, "error": f"worker exited ({tail or 'no message'})"}
        return json.loads(line)

    def request(self, **cmd: Any) -> dict:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"ok": False, "error": "worker exited"}
        return self._read()

    def supports(self, frames: int) -> bool:
        return self.result.fixed_frames is None or self.result.fixed_frames == frames

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.result.error is None:
                stats = self.request(op="stats")
                if stats.get("ok"):
                    self.result.peak_rss_mb = stats["peak_rss_mb"]
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _interleave(workers: list[Worker], frames: int, seconds: float, *, budget_s: float,
                warmup: int, min_runs: int, max_runs: int, progress: Any = None) -> None:
    """Warm up, then A B C A B C ... chunks until every worker spent ``budget_s`` timed."""
    key = seconds_key(seconds)
    active: list[Worker] = []
    chunk: dict[int, int] = {}
    warm: dict[int, list[float]] = {}
    for w in workers:
        if not w.alive:
            continue
        if not w.supports(frames):
            w.result.latency[key] = None  # fixed-shape file at another window: n/a
            continue
        r = w.request(op="run", frames=frames, n=max(1, warmup))
        if not r.get("ok"):
            w.result.error = r.get("error")
            continue
        warm[id(w)] = r["times"]
        est = max(min(r["times"]), 1e-6)
        chunk[id(w)] = max(1, min(int(CHUNK_S / est), 100))
        active.append(w)
    times: dict[int, list[float]] = {id(w): [] for w in active}
    cpu: dict[int, list[float] | None] = {id(w): [] for w in active}
    spent: dict[int, float] = {id(w): 0.0 for w in active}
    while active:
        for w in list(active):
            need = max_runs - len(times[id(w)])
            r = w.request(op="run", frames=frames, n=max(1, min(chunk[id(w)], need)))
            if not r.get("ok"):
                w.result.error = r.get("error")
                active.remove(w)
                continue
            times[id(w)].extend(r["times"])
            if r.get("cpu") is None:
                cpu[id(w)] = None
            elif cpu[id(w)] is not None:
                cpu[id(w)].extend(r["cpu"])
            spent[id(w)] += sum(r["times"])
            done_runs = len(times[id(w)])
            if done_runs >= max_runs or (spent[id(w)] >= budget_s and done_runs >= min_runs):
                active.remove(w)
        if progress is not None:
            progress.set_postfix_str(f"{seconds:g} s, {len(active)} running")
    for w in workers:
        if id(w) in times and times[id(w)]:
            w.result.latency[key] = LatencyStats.from_times(seconds, frames, times[id(w)],
                                                            warm[id(w)], cpu[id(w)])


def measure(artifacts: list[ArtifactSpec], *, lengths: tuple[float, ...] = (1.0, 10.0),
            threads: tuple[int, ...] = (1, 2), budget_s: float = 2.0, warmup: int = 2,
            min_runs: int = 3, max_runs: int = 2000, include_gemm: bool = True,
            progress: bool = True) -> list[WorkerResult]:
    """Time every artifact (plus the reference GEMM) at every length and thread count.

    ``budget_s`` is the timed seconds per artifact, length and thread count (after warm-up).
    Returns one :class:`WorkerResult` per artifact and thread count (GEMM rows have kind
    ``gemm``). Artifacts that fail to load or run carry ``error`` and no timings.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    specs = list(artifacts)
    if include_gemm:
        specs.append(ArtifactSpec("reference GEMM", "gemm"))
    results: list[WorkerResult] = []
    bar = tqdm(total=len(threads) * (len(specs) + len(lengths)), desc="latency", unit="step",
               disable=not progress, leave=False)
    try:
        for t in threads:
            workers: list[Worker] = []
            try:
                for spec in specs:  # sequential start: load times are not disturbed
                    bar.set_postfix_str(f"{t} thread(s): loading {spec.name}")
                    workers.append(Worker(spec, t))
                    if workers[-1].result.error:
                        log.warning("%s (%d threads) failed to load: %s", spec.name, t,
                                    workers[-1].result.error)
                    bar.update(1)
                for seconds in lengths:
                    _interleave(workers, frames_for_seconds(seconds), seconds, budget_s=budget_s,
                                warmup=warmup, min_runs=min_runs, max_runs=max_runs,
                                progress=bar)
                    bar.update(1)
            finally:
                for w in workers:
                    w.close()
                    results.append(w.result)
    finally:
        bar.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Worker entry point (internal): ``python -m dymn_edge.benchmarks.latency --worker SPEC``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--worker":
        return _worker_main(argv[1])
    raise DymnEdgeError("internal module: run dymn-bench instead")


if __name__ == "__main__":
    sys.exit(main())
