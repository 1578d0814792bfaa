"""One benchmark run: export every requested artifact, time it, score it, collect everything.

The artifact loop iterates the exporter's format table (:func:`dymn_edge.export.formats.
iter_variants`), so a new format or precision is benchmarked without touching this file.
Files are written with :func:`dymn_edge.export.api.export_model` and measured through
:func:`dymn_edge.runtime.engines.load_engine`: what is measured is what ships.

Weights (``BenchConfig.weights`` unset, no ``random_init``): for DyMN-S with the shared FSDD
reference present, the trained ``fsdd_dymn04.pt`` on the FSDD test split (the built-in
accuracy check); otherwise the released AudioSet checkpoint (cache or download); when none
can be had, a random-init model, and the result says why accuracy is missing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dymn_edge.errors import DymnEdgeError
from dymn_edge.registry import get_spec

from dymn_edge.benchmarks import latency as lat
from dymn_edge.benchmarks.macs import count_model, deployed_macs

log = logging.getLogger(__name__)

RESULT_SCHEMA = 1
REFERENCE_NAME = "pytorch:fp32"


@dataclass
class BenchConfig:
    """What to benchmark and how long to spend."""

    model: str = "dymn-s"
    weights: str | None = None
    random_init: bool = False
    formats: list[str] | None = None  # ["onnx:fp32", ...]; None: every variant of the table
    data: str | None = None  # dataset folder; None: FSDD test split when the weights fit it
    split: str | None = None
    no_accuracy: bool = False
    max_clips: int | None = None
    window_s: float | None = None  # export window; None: the exporter's default
    lengths: tuple[float, ...] = (1.0, 10.0)
    threads: tuple[int, ...] = (1, 2)
    budget_s: float = 2.0
    reference: bool = True  # include the eager PyTorch row
    workdir: str | None = None  # where the files go; None: a temporary folder
    progress: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        get_spec(self.model)
        if self.random_init and self.weights:
            raise DymnEdgeError("--random-init and --weights exclude each other: pick one")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise DymnEdgeError(f"weights file not found: {self.weights}")
        if not self.lengths or any(x <= 0 for x in self.lengths):
            raise DymnEdgeError("--lengths needs positive seconds, e.g. 1,10")
        if not self.threads or any(t < 1 for t in self.threads):
            raise DymnEdgeError("--threads needs positive counts, e.g. 1,2")
        if self.budget_s <= 0:
            raise DymnEdgeError("--budget must be > 0 seconds")
        self.formats = [normalize_variant(v) for v in self.formats] if self.formats else None


def all_variants() -> list[str]:
    """Every ``format:precision`` of the exporter's table, in table order."""
    from dymn_edge.export.formats import iter_variants  # noqa: PLC0415

    return [f"{f.value}:{p.value}" for f, p in iter_variants()]


def normalize_variant(text: str) -> str:
    """``ONNX:FP32`` / ``tflite`` -> ``onnx:fp32`` / ``tflite:fp32``; checked against the table."""
    from dymn_edge.export.formats import format_spec  # noqa: PLC0415

    fmt, _, prec = text.strip().lower().partition(":")
    spec = format_spec(fmt)
    prec = prec or "fp32"
    if prec not in [p.value for p in spec.precisions]:
        allowed = ", ".join(p.value for p in spec.precisions)
        raise DymnEdgeError(f"{spec.format.value} does not support {prec} (supported: {allowed})")
    return f"{spec.format.value}:{prec}"


# ---------------------------------------------------------------------------------------


def _resolve_weights(cfg: BenchConfig, notes: list[str]) -> tuple[str | None, bool, str | None]:
    """(weights path, random_init, data folder) after the defaults described above."""
    from dymn_edge.datasets import default_fsdd_dir, default_fsdd_weights  # noqa: PLC0415

    if cfg.random_init:
        return None, True, None
    if cfg.weights:
        return str(Path(cfg.weights).expanduser()), False, cfg.data
    spec = get_spec(cfg.model)
    fsdd_w, fsdd_d = default_fsdd_weights(), default_fsdd_dir()
    if spec.name == "dymn-s" and cfg.data is None:
        if fsdd_w is not None and fsdd_d is not None:
            notes.append(f"weights: trained FSDD DyMN-S reference ({fsdd_w}); data: FSDD test split")
            return str(fsdd_w), False, str(fsdd_d)
        notes.append("FSDD reference data not found (set DYMN_EDGE_SHARED or put shared/ beside "
                     "the checkout): trying the released AudioSet weights")
    from dymn_edge.weights import resolve_weights  # noqa: PLC0415
    from dymn_edge.errors import WeightsError  # noqa: PLC0415

    try:
        return str(resolve_weights(spec, None, progress=cfg.progress)), False, cfg.data
    except WeightsError as exc:
        notes.append(f"no weights available ({exc}): random-init model, accuracy not measured")
        return None, True, None


def _validation_status(result: Any) -> tuple[str, dict[str, Any]]:
    """'validated' / 'exported' from an ExportResult's report (dict or object)."""
    report = getattr(result, "report", None)
    if report is None:
        return "exported", {}
    d = report if isinstance(report, dict) else (
        asdict(report) if hasattr(report, "__dataclass_fields__") else dict(vars(report)))
    for key in ("passed", "ok", "validated", "valid"):
        if key in d and d[key] is not None:
            return ("validated" if d[key] else "exported"), d
    return "exported", d


def _export(cfg: BenchConfig, variant: str, weights: str | None, random_init: bool,
            outdir: Path) -> dict[str, Any]:
    from dymn_edge.export.api import export_model  # noqa: PLC0415
    from dymn_edge.export.config import ExportConfig  # noqa: PLC0415

    fmt, prec = variant.split(":")
    row: dict[str, Any] = {"name": variant, "format": fmt, "precision": prec}
    t0 = time.perf_counter()
    try:
        ec = ExportConfig(model=cfg.model, weights=weights, random_init=random_init, format=fmt,
                          precision=prec, window_seconds=cfg.window_s,
                          output=str(outdir / f"{cfg.model}_{fmt}_{prec}"
                                     f"{'.onnx' if fmt == 'onnx' else '.tflite'}"))
        res = export_model(ec, progress=False)
    except DymnEdgeError as exc:
        row.update(status="failed", error=f"export: {exc}")
        return row
    except Exception as exc:  # a converter crash must not end the whole benchmark
        log.debug("export of %s crashed", variant, exc_info=True)
        row.update(status="failed", error=f"export crashed: {type(exc).__name__}: {exc}"[:400])
        return row
    status, report = _validation_status(res)
    meta = res.metadata
    row.update(
        status=status, path=str(res.path), size_mb=res.size_bytes / 1e6,
        export_s=time.perf_counter() - t0, strategy=meta.strategy,
        quantization=meta.quantization, window_s=meta.window_seconds,
        output_activation=meta.output_activation, dynamic_time=meta.dynamic_time,
        validation=_jsonable(report),
    )
    return row


def _jsonable(obj: Any) -> Any:
    import json  # noqa: PLC0415

    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return str(obj)


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """The whole run; returns the result document (see :mod:`dymn_edge.benchmarks.report`)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from dymn_edge.benchmarks.machine import machine_info, tool_versions  # noqa: PLC0415

    t_start = time.time()
    notes = list(cfg.notes)
    spec = get_spec(cfg.model)
    weights, random_init, data_dir = _resolve_weights(cfg, notes)
    if cfg.no_accuracy:
        data_dir = None
    variants = cfg.formats or all_variants()
    tmp = None
    if cfg.workdir:
        outdir = Path(cfg.workdir).expanduser()
        outdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dymn-bench-")
        outdir = Path(tmp.name)
    try:
        rows: list[dict[str, Any]] = []
        for v in tqdm(variants, desc="export", unit="file", disable=not cfg.progress, leave=False):
            row = _export(cfg, v, weights, random_init, outdir)
            if row["status"] == "failed":
                log.warning("%s: %s", v, row["error"])
            rows.append(row)
        exported = [r for r in rows if r["status"] != "failed"]
        window_s = next((r["window_s"] for r in exported), cfg.window_s)
        num_classes = _num_classes(weights, exported, spec)
        if window_s is None:
            window_s = 10.0 if num_classes == 527 else 1.0
        # Complexity (analytic, at the export window and per measured length)
        frames = lat.frames_for_seconds(window_s)
        cx = count_model(cfg.model, frames=frames, num_classes=num_classes)
        if cfg.reference:
            rows.insert(0, {"name": REFERENCE_NAME, "format": "pytorch", "precision": "fp32",
                            "status": "reference", "strategy": None, "window_s": window_s,
                            "size_mb": _weights_mb(weights), "output_activation":
                            exported[0]["output_activation"] if exported else "sigmoid"})
        for r in rows:
            if r["status"] == "failed":
                continue
            strat = r.get("strategy")
            r["macs"] = cx.macs
            r["deployed_macs"] = deployed_macs(cx, strat, export_form=r["format"] != "pytorch")
            if r["format"] == "onnx":
                r["graph_macs"] = _graph_macs(r["path"], frames)
        # Latency
        specs = []
        for r in rows:
            if r["status"] == "failed":
                continue
            if r["format"] == "pytorch":
                specs.append(lat.ArtifactSpec(r["name"], "torch", model=cfg.model, weights=weights,
                                              random_init=random_init))
            else:
                specs.append(lat.ArtifactSpec(r["name"], "engine", path=r["path"]))
        worker_results = lat.measure(specs, lengths=tuple(cfg.lengths), threads=tuple(cfg.threads),
                                     budget_s=cfg.budget_s, progress=cfg.progress)
        gemm = {str(w.threads): w for w in worker_results if w.kind == "gemm"}
        by_name: dict[str, list[lat.WorkerResult]] = {}
        for w in worker_results:
            by_name.setdefault(w.name, []).append(w)
        for r in rows:
            _attach_latency(r, by_name.get(r["name"], []), gemm, cx_macs=cx, frames_window=frames)
        machine = machine_info()
        machine["reference_gemm"] = {
            t: _gemm_summary(w) for t, w in gemm.items()
        }
        # Accuracy
        accuracy_info = _accuracy(cfg, rows, data_dir, weights, random_init, window_s, notes)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "schema": RESULT_SCHEMA,
        "config": {**asdict(cfg), "weights_resolved": weights, "random_init_resolved": random_init,
                   "data_resolved": data_dir, "variants": variants, "window_s": window_s},
        "model": {"name": spec.name, "arch": spec.arch.value, "width": spec.width,
                  "num_classes": num_classes, "published_gmacs": spec.published_gmacs,
                  "published_params_m": spec.published_params_m},
        "complexity": {
            "window_s": window_s, "frames": frames, "macs": cx.macs,
            "macs_with_aggregation": cx.macs_with_aggregation, "params": cx.params,
            "params_with_bn_stats": cx.params_with_bn_stats,
            "macs_10s": count_model(cfg.model, frames=1000, num_classes=num_classes).macs,
            "blocks": cx.to_dict()["blocks"],
        },
        "machine": machine,
        "tools": tool_versions(),
        "accuracy": accuracy_info,
        "artifacts": rows,
        "notes": notes,
        "duration_s": time.time() - t_start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _num_classes(weights: str | None, exported: list[dict], spec: Any) -> int:
    if weights:
        try:
            from dymn_edge.models.factory import num_classes_in, read_state_dict  # noqa: PLC0415

            return num_classes_in(read_state_dict(weights))
        except DymnEdgeError:
            pass
    return spec.num_classes


def _weights_mb(weights: str | None) -> float | None:
    return Path(weights).stat().st_size / 1e6 if weights else None


def _graph_macs(path: str, frames: int) -> int | None:
    from dymn_edge.benchmarks.graph_macs import count_onnx  # noqa: PLC0415

    try:
        return count_onnx(path, frames=frames).total
    except DymnEdgeError as exc:
        log.warning("graph MAC count of %s failed: %s", path, exc)
        return None


def _gemm_summary(w: lat.WorkerResult) -> dict[str, Any]:
    stats = [s for s in w.latency.values() if s is not None]
    if not stats:
        return {"error": w.error}
    med_ms = sorted(s.median_ms for s in stats)[len(stats) // 2]
    from dymn_edge.benchmarks.machine import GEMM_N  # noqa: PLC0415

    return {"n": GEMM_N, "macs": GEMM_N ** 3, "median_ms": med_ms,
            "gmacs_per_s": GEMM_N ** 3 / (med_ms / 1e3) / 1e9,
            "per_length": {k: (asdict(s) if s else None) for k, s in w.latency.items()}}


def _attach_latency(row: dict[str, Any], results: list[lat.WorkerResult],
                    gemm: dict[str, lat.WorkerResult], *, cx_macs: Any,
                    frames_window: int) -> None:
    """Put timings, ratios to the GEMM, RTF and MAC throughput fraction into ``row``."""
    from dymn_edge.benchmarks.macs import count as count_arch  # noqa: PLC0415

    row["latency"] = {}
    errors = []
    for w in results:
        t = str(w.threads)
        g = gemm.get(t)
        cell: dict[str, Any] = {"load_s": w.load_s, "peak_rss_mb": w.peak_rss_mb,
                                "model_rss_mb": w.model_rss_mb, "lengths": {}}
        for key, st in w.latency.items():
            if st is None:
                cell["lengths"][key] = None
                continue
            d = asdict(st)
            gst = g.latency.get(key) if g else None
            if gst is not None:
                d["gemm_median_ms"] = gst.median_ms
                d["ratio_to_gemm"] = st.median_ms / gst.median_ms
                macs = deployed_macs(count_arch(cx_macs.arch, cx_macs.width, frames=st.frames,
                                                num_classes=cx_macs.num_classes),
                                     row.get("strategy"), export_form=row["format"] != "pytorch")
                d["deployed_macs"] = macs
                # achieved MAC/s of the artifact over the GEMM's MAC/s, same threads, same run
                d["mac_fraction"] = (macs / st.median_ms) / (_gemm_macs() / gst.median_ms)
            cell["lengths"][key] = d
        hop = 1.0
        win_key = lat.seconds_key(row.get("window_s") or 0)
        wst = cell["lengths"].get(win_key)
        cell["rtf"] = (wst["median_ms"] / 1e3 / hop) if wst else None
        if w.error:
            errors.append(f"{w.threads} thread(s): {w.error}")
        row["latency"][t] = cell
    if errors and row["status"] != "failed":
        row["status"] = "failed"
        row["error"] = "; ".join(errors)[:400]


def _gemm_macs() -> int:
    from dymn_edge.benchmarks.machine import GEMM_N  # noqa: PLC0415

    return GEMM_N ** 3


def _accuracy(cfg: BenchConfig, rows: list[dict[str, Any]], data_dir: str | None,
              weights: str | None, random_init: bool, window_s: float,
              notes: list[str]) -> dict[str, Any]:
    """Score every artifact; returns dataset info (or why accuracy is missing)."""
    from dymn_edge.benchmarks import accuracy as acc  # noqa: PLC0415
    from dymn_edge.datasets import load_dataset  # noqa: PLC0415

    if data_dir is None:
        reason = ("disabled (--no-accuracy)" if cfg.no_accuracy else
                  "random-init model (untrained weights mean nothing)" if random_init else
                  "no labelled data: pass --data DIR (FSDD / ESC-50 / AudioSet CSV / labels.csv)")
        notes.append(f"accuracy not measured: {reason}")
        return {"measured": False, "reason": reason}
    split = cfg.split
    ds_probe = Path(data_dir)
    if split is None and (ds_probe / "split.csv").is_file():
        split = "test"
    ds = load_dataset(data_dir, split=split)
    num_classes = _num_classes(weights, [], get_spec(cfg.model))
    if len(ds.labels) != num_classes:
        raise DymnEdgeError(f"dataset {ds.name} has {len(ds.labels)} classes, the model "
                            f"{num_classes}: pass matching --weights and --data")
    data = acc.prepare(ds, window_s=window_s, limit=cfg.max_clips, progress=cfg.progress)
    from dymn_edge.models import create_model  # noqa: PLC0415

    model = create_model(cfg.model, weights=weights, allow_download=False)
    ref_logits = acc.predict(acc.torch_runner(model), data)
    activation = next((r.get("output_activation") for r in rows
                       if r.get("output_activation")), "sigmoid")
    from dymn_edge.runtime.engines import load_engine  # noqa: PLC0415

    threads = max(cfg.threads)
    for r in rows:
        if r["status"] == "failed":
            continue
        if r["format"] == "pytorch":
            r["scores"] = acc.score(ref_logits, data, reference=ref_logits,
                                    activation=activation).to_dict()
            continue
        try:
            engine = load_engine(r["path"], threads=threads)
            logits = acc.predict(engine.run, data)
        except DymnEdgeError as exc:
            r["status"], r["error"] = "failed", f"accuracy run: {exc}"
            continue
        r["scores"] = acc.score(logits, data, reference=ref_logits,
                                activation=activation).to_dict()
    return {"measured": True, "dataset": ds.name, "layout": ds.layout, "clips": len(data.mels),
            "classes": len(ds.labels), "multilabel": ds.multilabel, "window_s": window_s}
