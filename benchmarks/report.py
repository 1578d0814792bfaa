"""The benchmark's outputs: one table (per thread count), the JSON document, a PNG plot.

The table follows Ultralytics' benchmark table: one row per artifact (and model), status
first, so a failed export is a visible row rather than a missing one. The plot is accuracy
against latency and against MACs per artifact, in the spirit of Fig. 4 of the DyMN paper,
plus each DyMN file's latency ratio to its static MN partner when the run holds both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from dymn_edge.errors import DymnEdgeError

log = logging.getLogger(__name__)


def _f(value: Any, fmt: str, na: str = "n/a") -> str:
    return na if value is None else format(value, fmt)


def _metric(row: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(value, delta, name): accuracy for single-label sets, else mAP."""
    s = row.get("scores")
    if not s:
        return None, None, ""
    if s.get("accuracy") is not None:
        return s["accuracy"], s.get("delta_accuracy"), "acc"
    return s.get("map"), s.get("delta_map"), "mAP"


def _cells(row: dict[str, Any], t: str) -> dict[str, Any]:
    return (((row.get("latency") or {}).get(t) or {}).get("lengths") or {})


def _has(rows: list[dict[str, Any]], t: str, key: str) -> bool:
    return any((st or {}).get(key) is not None for r in rows for st in _cells(r, t).values())


def format_table(result: dict[str, Any], threads: str | None = None) -> str:
    """Text table of one thread count (default: the first measured)."""
    rows = result["artifacts"]
    lengths = [f"{x:g}" for x in result["config"]["lengths"]]
    t_all = [str(t) for t in result["config"]["threads"]]
    t = threads or t_all[0]
    metric_name = next((_metric(r)[2] for r in rows if _metric(r)[2]), "acc")
    window = result["complexity"]["window_s"]
    with_static, with_eager = _has(rows, t, "ratio_to_static"), _has(rows, t, "speedup_vs_eager")
    with_cpu, with_frac = _has(rows, t, "cpu_median_ms"), _has(rows, t, "mac_fraction")
    head = ["model", "format", "precision", "status", "size MB", f"GMAC@{window:g}s", "ops",
            metric_name, "delta"]
    for L in lengths:
        head += [f"p50 {L}s ms", f"p90 {L}s ms"]
        head += [f"cpu {L}s ms"] if with_cpu else []
        head += [f"%GEMM {L}s"] if with_frac else []
        head += [f"/MN {L}s"] if with_static else []
        head += [f"xeager {L}s"] if with_eager else []
    head += ["RTF", "load s", "RSS MB"]
    table = [head]
    for r in rows:
        cell = (r.get("latency") or {}).get(t) or {}
        val, delta, _ = _metric(r)
        # the variant's head: the format, or the engine of an engine row (openvino:fp32)
        line = [r.get("model") or result["model"]["name"], r["name"].partition(":")[0], r["precision"],
                r["status"] + (" (cached)" if r.get("cached") else ""),
                _f(r.get("size_mb"), ".2f"),
                _f(r.get("deployed_macs") and r["deployed_macs"] / 1e9, ".4f"),
                _f((r.get("ops") or {}).get("total"), "d", "-"),
                _f(val, ".4f", "-"), _f(delta, "+.4f", "-")]
        for L in lengths:
            st = (cell.get("lengths") or {}).get(L)
            line += [_f(st and st["median_ms"], ".2f"), _f(st and st["p90_ms"], ".2f")]
            line += [_f(st and st.get("cpu_median_ms"), ".2f", "-")] if with_cpu else []
            line += [_f(st and st.get("mac_fraction") and 100 * st["mac_fraction"], ".0f", "-")
                     ] if with_frac else []
            line += [_f(st and st.get("ratio_to_static"), ".2f", "-")] if with_static else []
            line += [_f(st and st.get("speedup_vs_eager"), ".2f", "-")] if with_eager else []
        line += [_f(cell.get("rtf"), ".4f"), _f(cell.get("load_s"), ".2f"),
                 _f(cell.get("peak_rss_mb"), ".0f")]
        table.append(line)
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    names = list(result.get("models") or [result["model"]["name"]])
    out = [f"DyMN benchmark: {', '.join(names)} ({_weights_label(result)}), "
           f"{t} thread(s), window {window:g} s, {result['machine'].get('cpu')}"]
    if result["config"].get("threads_default"):  # --threads left out: what was chosen and why
        out[0] += f" ({result['config']['threads_default']})"
    for i, row in enumerate(table):
        out.append("  ".join(str(c).rjust(w) if j >= 4 else str(c).ljust(w)
                             for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out += _notes(result, rows, t, with_cpu, with_frac, with_static, with_eager)
    return "\n".join(out)


def _notes(result: dict[str, Any], rows: list[dict[str, Any]], t: str, with_cpu: bool,
           with_frac: bool, with_static: bool, with_eager: bool) -> list[str]:
    """The lines under the table: the reference GEMM, what the ratio columns mean, errors."""
    out: list[str] = []
    g = (result["machine"].get("reference_gemm") or {}).get(t) or {}
    if g.get("gmacs_per_s"):
        out.append(f"reference GEMM {g['n']}^3 fp32: {g['median_ms']:.2f} ms "
                   f"= {g['gmacs_per_s']:.1f} GMAC/s ({t} thread(s))")
    if with_cpu:
        out.append("cpu: median thread CPU time per window (1 thread: what /MN, xeager and "
                   "%GEMM use; the wall clock of a shared box also counts waiting for a core)")
    if with_frac:
        out.append("%GEMM: deployed MACs per second over the reference GEMM's, same run")
    if with_static:
        out.append("/MN: median latency over the static MN partner's (same format, precision, "
                   "threads, length; same run)")
    if with_eager:
        out.append("xeager: the same model's eager PyTorch median over this file's (speed-up)")
    for r in rows:
        if r.get("error"):
            who = " ".join(x for x in (r.get("model"), r["name"]) if x)
            out.append(f"! {who}: {r['error']}")
    return out


def _weights_label(result: dict[str, Any]) -> str:
    models = result.get("models")
    if not models:  # a single-model document
        cfg = result["config"]
        return _one_label(cfg.get("random_init_resolved"), cfg.get("weights_resolved"))
    labels = [(m, _one_label(d.get("random_init_resolved"), d.get("weights_resolved")))
              for m, d in models.items()]
    if len({lab for _, lab in labels}) == 1:
        return labels[0][1]
    return ", ".join(f"{m}: {lab}" for m, lab in labels)


def _one_label(random_init: Any, weights: Any) -> str:
    if random_init:
        return "random init"
    return Path(weights).name if weights else "?"


def format_report(result: dict[str, Any]) -> str:
    """All tables, complexity summary and notes, as the CLI prints them."""
    tables = [format_table(result, str(t)) for t in result["config"]["threads"]]
    parts = []
    per_model = result.get("models") or {
        result["model"]["name"]: {"model": result["model"], "complexity": result["complexity"]}}
    for doc in per_model.values():
        m, cx = doc["model"], doc["complexity"]
        figures = [f"{v} {unit}" for v, unit in ((m.get("published_gmacs"), "GMAC"),
                                                 (m.get("published_params_m"), "M"))
                   if v is not None]
        pub = (("published " + ", ".join(figures) if figures else "no published figures")
               if m.get("num_classes") == 527 else
               f"{m.get('num_classes')}-class head; the published figures are for 527 classes")
        parts.append(
            f"complexity {m['name']} ({pub}): {cx['macs_10s'] / 1e9:.4f} GMAC per 10 s, "
            f"{cx['macs'] / 1e9:.4f} GMAC per "
            f"{cx['window_s']:g} s window ({cx['macs_with_aggregation'] / 1e9:.4f} with kernel "
            f"aggregation); params {cx['params'] / 1e6:.3f} M trainable, "
            f"{cx['params_with_bn_stats'] / 1e6:.3f} M with BatchNorm statistics")
    for r in result["artifacts"]:
        if r.get("graph_macs") is not None:
            parts.append(f"graph check {r.get('model', '')} {r['name']}: ONNX Conv/MatMul/Gemm "
                         f"{r['graph_macs']:,} MACs vs analytic deployed {r['deployed_macs']:,}")
    acc = result.get("accuracy") or {}
    if acc.get("measured"):
        parts.append(f"accuracy on {acc['dataset']} ({acc['clips']} clips, {acc['classes']} "
                     "classes); delta = artifact - PyTorch fp32 reference")
    parts += [f"note: {n}" for n in result.get("notes", [])]
    return "\n\n".join(tables) + "\n\n" + "\n".join(parts)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=1, sort_keys=False, default=str) + "\n")
    return p


def read_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DymnEdgeError(f"{p}: benchmark JSON not found") from None
    except (OSError, ValueError) as exc:
        raise DymnEdgeError(f"{p}: not a dymn-bench JSON ({exc})") from None


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Accuracy vs latency (left) and vs deployed MACs (right), one point per artifact."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = str(result["config"]["threads"][0])
    window = f"{result['complexity']['window_s']:g}"
    ratios = [(f"{r.get('model', '')} {r['name']}", _cells(r, t).get(window) or {})
              for r in result["artifacts"] if r["status"] != "failed"]
    ratios = [(n, st["ratio_to_static"]) for n, st in ratios if st.get("ratio_to_static")]
    fig, axes = plt.subplots(1, 3 if ratios else 2, figsize=(16 if ratios else 11, 4.5))
    metric_name = "accuracy"
    have_metric = False
    for r in result["artifacts"]:
        if r["status"] == "failed":
            continue
        val, _, name = _metric(r)
        metric_name = {"acc": "accuracy", "mAP": "mAP"}.get(name, metric_name)
        y = val if val is not None else float("nan")
        have_metric |= val is not None
        st = (((r.get("latency") or {}).get(t) or {}).get("lengths") or {}).get(window)
        x_lat = st["median_ms"] if st else float("nan")
        x_mac = (r.get("deployed_macs") or float("nan")) / 1e9
        for ax, x in ((axes[0], x_lat), (axes[1], x_mac)):
            ax.scatter([x], [y if have_metric else 0.0], s=40)
            ax.annotate(f"{r.get('model', '')} {r['name']}".strip(),
                        (x, y if have_metric else 0.0), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    axes[0].set_xlabel(f"median latency, {window} s input, {t} thread(s) [ms]")
    axes[1].set_xlabel(f"deployed GMACs per {window} s window")
    for ax in axes[:2]:
        ax.set_ylabel(metric_name if have_metric else "(accuracy not measured)")
        ax.grid(True, alpha=0.3)
    if ratios:
        ax = axes[2]
        ax.barh([n for n, _ in ratios], [v for _, v in ratios], color="tab:orange")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlabel(f"latency / static MN partner, {window} s input, {t} thread(s)")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    names = ", ".join(result.get("models") or [result["model"]["name"]])
    fig.suptitle(f"{names}: {metric_name} vs latency and compute "
                 f"({result['machine'].get('cpu')})", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
