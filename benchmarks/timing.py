"""Latency of every row: one interleaved run, then ratios to the GEMM, the MN partner, eager.

All artifacts of all models are timed in ONE interleaved latency run
(:func:`dymn_edge.benchmarks.latency.measure`), so a DyMN row's median divided by the median
of its static partner's row (same format:precision, threads and input length) is a ratio
taken under the same load: ``ratio_to_static``. ``speedup_vs_eager`` is the same model's
eager PyTorch median over the artifact's.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dymn_edge.benchmarks import latency as lat
from dymn_edge.benchmarks.config import FUSED, REFERENCE_NAME, BenchConfig, ModelRun, static_partner
from dymn_edge.benchmarks.machine import GEMM_N
from dymn_edge.benchmarks.macs import count as count_arch
from dymn_edge.benchmarks.macs import deployed_macs


def time_runs(cfg: BenchConfig, runs: list[ModelRun]) -> dict[str, dict[str, Any]]:
    """Time every row of ``runs`` in place; returns the reference GEMM summary per threads."""
    specs = []
    for mr in runs:
        for r in mr.rows:
            if r["status"] == "failed":
                continue
            sname = f"{mr.name} {r['name']}"
            if r["format"] == "pytorch":
                specs.append(lat.ArtifactSpec(sname, "torch", model=mr.name, weights=mr.weights,
                                              random_init=mr.random_init))
            else:
                specs.append(lat.ArtifactSpec(sname, "engine", path=r["path"], engine=r.get("engine")))
    worker_results = lat.measure(specs, lengths=tuple(cfg.lengths), threads=tuple(cfg.threads),
                                 budget_s=cfg.budget_s, progress=cfg.progress)
    gemm = {str(w.threads): w for w in worker_results if w.kind == "gemm"}
    by_spec: dict[str, list[lat.WorkerResult]] = {}
    for w in worker_results:
        by_spec.setdefault(w.name, []).append(w)
    for mr in runs:
        for r in mr.rows:
            attach_latency(r, by_spec.get(f"{mr.name} {r['name']}", []), gemm, cx_macs=mr.cx)
    attach_ratios([r for mr in runs for r in mr.rows])
    return {t: _gemm_summary(w) for t, w in gemm.items()}


def _gemm_summary(w: lat.WorkerResult) -> dict[str, Any]:
    stats = [s for s in w.latency.values() if s is not None]
    if not stats:
        return {"error": w.error}
    med_ms = sorted(s.median_ms for s in stats)[len(stats) // 2]
    return {"n": GEMM_N, "macs": GEMM_N ** 3, "median_ms": med_ms,
            "gmacs_per_s": GEMM_N ** 3 / (med_ms / 1e3) / 1e9,
            "per_length": {k: (asdict(s) if s else None) for k, s in w.latency.items()}}


def attach_latency(row: dict[str, Any], results: list[lat.WorkerResult],
                   gemm: dict[str, lat.WorkerResult], *, cx_macs: Any) -> None:
    """Put timings, ratios to the GEMM, RTF and MAC throughput fraction into ``row``."""
    row["latency"] = {}
    errors = []
    for w in results:
        cell: dict[str, Any] = {"load_s": w.load_s, "peak_rss_mb": w.peak_rss_mb,
                                "model_rss_mb": w.model_rss_mb, "lengths": {}}
        g = gemm.get(str(w.threads))
        for key, st in w.latency.items():
            cell["lengths"][key] = None if st is None else _length_cell(
                row, st, g.latency.get(key) if g else None, cx_macs)
        hop = 1.0
        wst = cell["lengths"].get(lat.seconds_key(row.get("window_s") or 0))
        cell["rtf"] = (wst["median_ms"] / 1e3 / hop) if wst else None
        if w.error:
            errors.append(f"{w.threads} thread(s): {w.error}")
        row["latency"][str(w.threads)] = cell
    if errors and row["status"] != "failed":
        row["status"] = "failed"
        row["error"] = "; ".join(errors)[:400]


def _length_cell(row: dict[str, Any], st: Any, gst: Any, cx_macs: Any) -> dict[str, Any]:
    """One length's statistics with its ratio to the GEMM of the same threads and run."""
    d = asdict(st)
    if gst is not None:
        d["gemm_median_ms"] = gst.median_ms
        d["ratio_to_gemm"] = st.median_ms / gst.median_ms
        macs = deployed_macs(count_arch(cx_macs.arch, cx_macs.width, frames=st.frames,
                                        num_classes=cx_macs.num_classes),
                             row.get("strategy"), export_form=row["format"] != "pytorch")
        d["deployed_macs"] = macs
        # achieved MAC/s of the artifact over the GEMM's MAC/s, same threads, same run
        d["mac_fraction"] = (macs / st.steady_ms) / (GEMM_N ** 3 / gst.steady_ms)
    return d


def _medians(row: dict[str, Any]) -> dict[tuple[str, str], float]:
    out = {}
    for t, cell in (row.get("latency") or {}).items():
        for L, st in ((cell or {}).get("lengths") or {}).items():
            if st and (st.get("cpu_median_ms") or st.get("median_ms")):
                out[(t, L)] = st.get("cpu_median_ms") or st["median_ms"]  # CPU time at 1 thread
    return out


def _partner_variant(name: str) -> str:
    """The static partner's row of a variant: the same, except fused rows (engine:fused), whose
    partner is the engine's fp32 row (a static model's file is the same in every form)."""
    engine, _, prec = name.partition(":")
    return f"{engine}:fp32" if prec == FUSED else name


def attach_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_static`` (DyMN / its MN partner) and ``speedup_vs_eager`` per latency cell.

    Both are ratios of medians measured in the same interleaved run: machine speed and load
    cancel. At 1 thread the medians are thread CPU time (steadier than wall time on a shared
    box), at more threads wall time. Rows are matched on model (partner from the registry),
    format:precision, threads and input length; a cell without a counterpart gets no key.
    """
    ok = {(r.get("model"), r["name"]): r for r in rows
          if r["status"] != "failed" and r.get("latency")}
    for (model, name), r in ok.items():
        med = _medians(r)
        partner = ok.get((static_partner(model) if model else None, _partner_variant(name)))
        eager = ok.get((model, REFERENCE_NAME)) if r["format"] != "pytorch" else None
        if partner is not None:
            r["static_model"] = partner["model"]
        for other, key, mine_over_other in ((partner, "ratio_to_static", True),
                                            (eager, "speedup_vs_eager", False)):
            if other is None:
                continue
            om = _medians(other)
            for (t, L), ms in med.items():
                if (t, L) in om:
                    r["latency"][t]["lengths"][L][key] = (ms / om[(t, L)] if mine_over_other
                                                          else om[(t, L)] / ms)
