"""``dymn-bench --front``: exported latency of the whole MN / DyMN family against published mAP.

For each engine of the runtime's engine table (ONNX Runtime and OpenVINO on the ONNX file,
LiteRT on the TFLite file) every model is exported at one window and timed in ONE interleaved
run (1 thread, thread CPU time: the steadiest measure on a shared machine), then set against
the AudioSet mAP its authors published. A model is on the accuracy / latency front of an
engine when no other model of that engine is at least as fast and at least as accurate, and
strictly one of the two. The question the table answers: for a latency budget on this
engine, is a DyMN the most accurate model that fits?

Latency does not depend on the weights, so the front times random-init models (the registry's
architectures at their published widths) and says so; the mAP column is the published one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dymn_edge.benchmarks.config import FUSED, BenchConfig, variant_file
from dymn_edge.benchmarks.latency import seconds_key
from dymn_edge.registry import Arch, get_spec

log = logging.getLogger(__name__)

__all__ = ["FRONT_MODELS", "FRONT_VARIANTS", "FrontPoint", "pareto_front", "front_config", "front_points",
           "format_front", "plot_front", "run_front"]

#: The registry's AudioSet models with a published mAP, static widths then dynamic ones.
FRONT_MODELS = ("mn-s", "mn-05", "mn-m", "mn-20", "mn-30", "mn-40", "dymn-s", "dymn-m", "dymn-l")
#: One row per engine: the variant that runs the model's file in it. ``openvino:fused`` (the
#: fused export form, dynamic models only) makes its own panel, with the static models'
#: OpenVINO points beside it (their files are the same in every form).
FRONT_VARIANTS = ("onnx:fp32", "openvino:fp32", "openvino:fused", "tflite:fp32")
FUSED_PANEL = "openvino (fused form)"
RANDOM_INIT_NOTE = ("latency of random-init models (the published architectures; latency does not "
                    "depend on the weights); mAP as published on AudioSet")


@dataclass(frozen=True)
class FrontPoint:
    """One model on one engine: its latency and published mAP, and whether it is on the front."""

    engine: str
    model: str
    mAP: float
    latency_ms: float
    on_front: bool = False

    @property
    def dynamic(self) -> bool:
        return get_spec(self.model).arch is not Arch.MN


def pareto_front(points: list[tuple[str, float, float]]) -> set[str]:
    """Names on the front of (name, latency, accuracy) points: lower latency, higher accuracy.

    A point is dominated when another is no slower and no less accurate, and strictly better
    in one; exact ties (same latency and accuracy) both stay on the front.
    """
    front = set()
    for name, lat, acc in points:
        dominated = any(o_lat <= lat and o_acc >= acc and (o_lat < lat or o_acc > acc)
                        for o_name, o_lat, o_acc in points if o_name != name)
        if not dominated:
            front.add(name)
    return front


def front_config(models: tuple[str, ...] = FRONT_MODELS, variants: tuple[str, ...] = FRONT_VARIANTS, *,
                 window_s: float = 1.0, budget_s: float = 2.0, workdir: str | None = None,
                 progress: bool = True) -> BenchConfig:
    """The benchmark run behind the front: random-init, one window, 1 thread, no accuracy run."""
    return BenchConfig(model=",".join(models), random_init=True, formats=list(variants), window_s=window_s,
                       lengths=(window_s,), threads=(1,), budget_s=budget_s, reference=False,
                       no_accuracy=True, workdir=workdir, progress=progress,
                       notes=[RANDOM_INIT_NOTE])


def front_points(result: dict[str, Any], window_s: float) -> dict[str, list[FrontPoint]]:
    """Per engine, the timed models as points (sorted by latency) with the front marked.

    Latency: the 1-thread median thread CPU time at ``window_s`` (wall median where the CPU
    time is missing); failed rows and models without a published mAP are left out.
    """
    key = seconds_key(window_s)
    raw: dict[str, list[tuple[str, float, float]]] = {}
    for r in result.get("artifacts", []):
        if r.get("status") == "failed" or r.get("format") == "pytorch":
            continue
        st = (((r.get("latency") or {}).get("1") or {}).get("lengths") or {}).get(key)
        mAP = get_spec(r["model"]).published_mAP
        if not st or mAP is None:
            continue
        engine = r.get("engine") or variant_file(r["name"])[1]
        if r.get("precision") == FUSED:
            engine = FUSED_PANEL
        raw.setdefault(engine, []).append((r["model"], st.get("cpu_median_ms") or st["median_ms"], mAP))
    if FUSED_PANEL in raw:  # the static models run their one form beside the fused DyMN
        raw[FUSED_PANEL] += [p for p in raw.get("openvino", []) if get_spec(p[0]).arch is Arch.MN]
    out = {}
    for engine, pts in raw.items():
        front = pareto_front(pts)
        out[engine] = sorted((FrontPoint(engine, m, acc, lat, m in front) for m, lat, acc in pts),
                             key=lambda p: p.latency_ms)
    return out


def format_front(points: dict[str, list[FrontPoint]], window_s: float) -> str:
    """One table per engine, fastest first; ``*`` marks the front, and a line per engine says
    which DyMN are on it."""
    lines = [f"accuracy / latency front at a {window_s:g} s window, 1 thread (median thread CPU time), "
             f"{RANDOM_INIT_NOTE}"]
    for engine, pts in points.items():
        lines += ["", f"{engine}:", f"  {'model':<8} {'mAP':>5} {'ms':>8}  front"]
        lines += [f"  {p.model:<8} {p.mAP:5.1f} {p.latency_ms:8.2f}  {'*' if p.on_front else ''}" for p in pts]
        dyn = [p for p in pts if p.dynamic]
        on = [p.model for p in dyn if p.on_front]
        off = [p.model for p in dyn if not p.on_front]
        lines.append(f"  DyMN on the front: {', '.join(on) or 'none'}"
                     + (f"; not: {', '.join(off)}" if off else ""))
    return "\n".join(lines)


def plot_front(points: dict[str, list[FrontPoint]], out: str | Path, window_s: float) -> Path:
    """mAP against latency, one panel per engine, the front drawn as a step line."""
    import matplotlib  # noqa: PLC0415 (the bench extra; only for --plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, max(1, len(points)), figsize=(5 * max(1, len(points)), 4), squeeze=False)
    for ax, (engine, pts) in zip(axes[0], points.items()):
        for p in pts:
            ax.scatter(p.latency_ms, p.mAP, marker="o" if p.dynamic else "s",
                       color="tab:red" if p.dynamic else "tab:blue", edgecolors="black" if p.on_front else "none")
            ax.annotate(p.model, (p.latency_ms, p.mAP), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = [p for p in pts if p.on_front]
        ax.step([p.latency_ms for p in front], [p.mAP for p in front], where="post", color="gray", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"{engine}, {window_s:g} s window, 1 thread")
        ax.set_xlabel("latency (ms, thread CPU time)")
        ax.set_ylabel("published AudioSet mAP")
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_front(cfg: BenchConfig) -> tuple[dict[str, Any], dict[str, list[FrontPoint]]]:
    """Export (or reuse) and time every model of ``cfg`` on every engine; the result and points."""
    from dymn_edge.benchmarks.runner import run_benchmark  # noqa: PLC0415 (imports torch)

    result = run_benchmark(cfg)
    window = cfg.window_s or 1.0
    points = front_points(result, window)
    result["front"] = {engine: [p.__dict__ for p in pts] for engine, pts in points.items()}
    return result, points
