"""One benchmark run: export every requested artifact, time it, score it, collect everything.

The steps live in modules of one purpose each: what to run (:mod:`.config`), the files
(:mod:`.artifacts`, exported or taken from the export cache), what they compute
(:mod:`.complexity`), how fast they run (:mod:`.timing`, one interleaved run for all models)
and how well they tag (:mod:`.scoring`). This module resolves each model's weights and
puts the result document together (see :mod:`dymn_edge.benchmarks.report`).

Weights: ``BenchConfig.weights`` for the one model that is not random-init (with ``data``
and ``activation`` for a non-AudioSet head), else the released AudioSet checkpoint (cache or
download); when none can be had, a random-init model, and the result says why accuracy is
missing. Nothing is looked for beside the checkout: the CI passes its reference weights and
data explicitly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dymn_edge.benchmarks import complexity, scoring, timing
from dymn_edge.benchmarks.artifacts import cache_root, export_artifact
from dymn_edge.benchmarks.config import (
    FUSED, RESULT_SCHEMA, BenchConfig, ModelRun, all_variants, static_partner, variant_applies,
)
from dymn_edge.benchmarks.machine import machine_info, tool_versions
from dymn_edge.benchmarks.macs import count_model
from dymn_edge.errors import DymnEdgeError, WeightsError
from dymn_edge.registry import get_spec
from dymn_edge.weights import resolve_weights

log = logging.getLogger(__name__)


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """The whole run; returns the result document (see :mod:`dymn_edge.benchmarks.report`)."""
    t_start = time.time()
    notes = list(cfg.notes)
    runs = _model_runs(cfg, notes)
    scoring.check_runs(cfg, runs)
    # One window for every model of a run: fixed-shape TFLite files of two models are only
    # comparable at the same window. Default: the first model's (10 s AudioSet head, else 1 s).
    window_req = cfg.window_s
    if window_req is None and len(runs) > 1:
        window_req = 10.0 if runs[0].num_classes == 527 else 1.0
    variants = cfg.formats or all_variants()
    root = cache_root(cfg)
    _export_all(cfg, runs, variants, window_req, root, notes)
    for mr in runs:
        exported = [r for r in mr.rows if r["status"] != "failed"]
        mr.window_s = next((r["window_s"] for r in exported), window_req) or (
            10.0 if mr.num_classes == 527 else 1.0)
        if cfg.reference:
            mr.rows.insert(0, complexity.reference_row(mr))
        complexity.annotate(mr)  # analytic, at the export window and per measured length
    gemm = timing.time_runs(cfg, runs)  # every artifact of every model in one interleaved run
    machine = machine_info()
    machine["reference_gemm"] = gemm
    for mr in runs:  # accuracy, per model on its own data
        mr.accuracy = scoring.score_model(cfg, mr, notes)
    first = runs[0]
    models_doc = {mr.name: _model_doc(mr) for mr in runs}
    return {
        "schema": RESULT_SCHEMA,
        "config": {**asdict(cfg), "models": cfg.models, "weights_resolved": first.weights,
                   "random_init_resolved": first.random_init, "data_resolved": first.data_dir,
                   "variants": variants, "window_s": first.window_s,
                   "cache_dir": str(root)},
        "model": models_doc[first.name]["model"],
        "models": models_doc,
        "complexity": models_doc[first.name]["complexity"],
        "machine": machine,
        "tools": tool_versions(),
        "accuracy": first.accuracy,
        "artifacts": [r for mr in runs for r in mr.rows],
        "notes": notes,
        "duration_s": time.time() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _model_runs(cfg: BenchConfig, notes: list[str]) -> list[ModelRun]:
    """One :class:`ModelRun` per model with its weights, data and head size resolved."""
    runs = [ModelRun(m, *_resolve_weights(cfg, m, notes)) for m in cfg.models]
    for mr in runs:
        if cfg.no_accuracy:
            mr.data_dir = None
        mr.num_classes = _num_classes(mr.weights, get_spec(mr.name))
    return runs


def _export_all(cfg: BenchConfig, runs: list[ModelRun], variants: list[str],
                window_req: float | None, root: Path, notes: list[str]) -> None:
    """Export (or take from the cache) every variant of every model into its rows."""
    jobs = [(mr, v) for mr in runs for v in variants if variant_applies(mr.name, v)]
    skipped = sorted({mr.name for mr in runs for v in variants if not variant_applies(mr.name, v)})
    if skipped:
        notes.append(f"{', '.join(skipped)}: no {FUSED} rows (static models have no dynamic blocks: "
                     f"their files are the same in every form)")
    for mr, v in tqdm(jobs, desc="export", unit="file", disable=not cfg.progress, leave=False):
        row = export_artifact(mr.name, v, mr.weights, mr.random_init, window_req, mr.activation,
                              root, cfg.cache, cfg.calibration)
        if row["status"] == "failed":
            log.warning("%s %s: %s", mr.name, v, row["error"])
        mr.rows.append(row)
    reused = sum(1 for mr in runs for r in mr.rows if r.get("cached"))
    notes.append(f"export cache {root}: {reused} file(s) reused, "
                 f"{sum(len(mr.rows) for mr in runs) - reused} exported"
                 f"{' (--no-cache)' if not cfg.cache else ''}")


def _resolve_weights(cfg: BenchConfig, model: str,
                     notes: list[str]) -> tuple[str | None, bool, str | None, str | None]:
    """(weights path, random_init, data folder, activation) of ``model`` after the defaults."""
    if model in cfg.random_init_models:  # speed partners: the exporter's own head rule
        return None, True, None, None
    if cfg.random_init:
        return None, True, None, cfg.activation
    if cfg.weights:
        return str(Path(cfg.weights).expanduser()), False, cfg.data, cfg.activation
    try:
        return (str(resolve_weights(get_spec(model), None, progress=cfg.progress)), False, cfg.data,
                cfg.activation)
    except WeightsError as exc:  # as dymn-export: never time an untrained model in its place
        raise WeightsError(f"{model}: {exc}; or pass --random-init to time an "
                           "untrained model of the same shape") from None


def _num_classes(weights: str | None, spec: Any) -> int:
    if weights:
        try:
            from dymn_edge.models.factory import num_classes_in, read_state_dict  # noqa: PLC0415  (torch)

            return num_classes_in(read_state_dict(weights))
        except DymnEdgeError:
            pass
    return spec.num_classes


def _model_doc(mr: ModelRun) -> dict[str, Any]:
    spec = get_spec(mr.name)
    cx = mr.cx
    return {
        "model": {"name": spec.name, "arch": spec.arch.value, "width": spec.width,
                  "num_classes": mr.num_classes, "published_gmacs": spec.published_gmacs,
                  "published_params_m": spec.published_params_m,
                  "static_partner": static_partner(spec.name)},
        "weights_resolved": mr.weights, "random_init_resolved": mr.random_init,
        "data_resolved": mr.data_dir,
        "complexity": {
            "window_s": mr.window_s, "frames": cx.frames, "macs": cx.macs,
            "macs_with_aggregation": cx.macs_with_aggregation, "params": cx.params,
            "params_with_bn_stats": cx.params_with_bn_stats,
            "macs_10s": count_model(mr.name, frames=1000, num_classes=mr.num_classes).macs,
            "blocks": cx.to_dict()["blocks"],
        },
        "accuracy": mr.accuracy,
    }
