"""One benchmark run: export every requested artifact, time it, score it, collect everything.

The artifact loop iterates the exporter's format table (:func:`dymn_edge.export.formats.
iter_variants`), so a new format or precision is benchmarked without touching this file.
Files are written with :func:`dymn_edge.export.api.export_model` and measured through
:func:`dymn_edge.runtime.engines.load_engine`: what is measured is what ships.

Several models in one run (``model="dymn-m,mn-m"``): every model's files are exported (or
re-used from the export cache, :mod:`dymn_edge.benchmarks.export_cache`), then all artifacts
of all models are timed in ONE interleaved latency run, so a DyMN row's median divided by the
median of its static partner's row (the registry's MN of the same width; same
format:precision, threads and input length) is a ratio taken under the same load:
``ratio_to_static``. ``speedup_vs_eager`` is the same model's eager PyTorch median over the
artifact's.

Weights: ``BenchConfig.weights`` for the one model that is not random-init (with ``data``
and ``activation`` for a non-AudioSet head), else the released AudioSet checkpoint (cache or
download); when none can be had, a random-init model, and the result says why accuracy is
missing. Nothing is looked for beside the checkout: the CI passes its reference weights and
data explicitly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dymn_edge.cliutil import check_input_file
from dymn_edge.errors import DymnEdgeError, WeightsError
from dymn_edge.registry import Arch, get_spec, list_models
from dymn_edge.weights import resolve_weights

from dymn_edge.benchmarks import latency as lat
from dymn_edge.benchmarks.macs import count_model, deployed_macs
import json

log = logging.getLogger(__name__)

RESULT_SCHEMA = 1
REFERENCE_NAME = "pytorch:fp32"


@dataclass
class BenchConfig:
    """What to benchmark and how long to spend."""

    model: str = "dymn-s"  # one registry name or a comma list ("dymn-m,mn-m")
    weights: str | None = None  # a checkpoint for a single model
    random_init: bool = False
    random_init_models: tuple[str, ...] = ()  # these models are random-init in any case
    activation: str | None = None  # exported head; None: the exporter's rule (sigmoid for AudioSet heads)
    formats: list[str] | None = None  # ["onnx:fp32", ...]; None: every variant of the table
    calibration: str | None = None  # audio folder of the calibrated int8 variants (CALIBRATED)
    data: str | None = None  # labelled set for accuracy; None: not measured
    split: str | None = None
    no_accuracy: bool = False
    max_clips: int | None = None
    window_s: float | None = None  # export window; None: the exporter's default (first model's)
    lengths: tuple[float, ...] = (1.0, 10.0)
    threads: tuple[int, ...] = (1, 2)
    budget_s: float = 2.0
    reference: bool = True  # include the eager PyTorch row (one per model)
    workdir: str | None = None  # export cache folder; None: $DYMN_EDGE_CACHE/bench
    cache: bool = True  # False: export again even when the cache holds a matching file
    progress: bool = True
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [get_spec(m).name for m in str(self.model).split(",") if m.strip()]
        if not names:
            raise DymnEdgeError("--model needs a registry name or a comma list, e.g. dymn-s,mn-s")
        self.model = ",".join(dict.fromkeys(names))
        self.random_init_models = tuple(get_spec(m).name for m in self.random_init_models)
        if self.random_init and self.weights:
            raise DymnEdgeError("--random-init and --weights exclude each other: pick one")
        if self.weights and len(self.trained_models) > 1:
            raise DymnEdgeError("--weights names one checkpoint: use it with one --model (several "
                                "models take --random-init or their released weights)")
        if self.weights:
            check_input_file(self.weights, "weights file")
        if self.activation is not None and self.activation not in ("sigmoid", "softmax"):
            raise DymnEdgeError(f"--activation must be sigmoid or softmax, got '{self.activation}'")
        if not self.lengths or any(x <= 0 for x in self.lengths):
            raise DymnEdgeError("--lengths needs positive seconds, e.g. 1,10")
        if not self.threads or any(t < 1 for t in self.threads):
            raise DymnEdgeError("--threads needs positive counts, e.g. 1,2")
        if self.budget_s <= 0:
            raise DymnEdgeError("--budget must be > 0 seconds")
        self.formats = [normalize_variant(v) for v in self.formats] if self.formats else None
        if self.formats and any(v in CALIBRATED for v in self.formats):
            if not self.calibration:
                raise DymnEdgeError(f"{', '.join(v for v in self.formats if v in CALIBRATED)} "
                                    "need calibration audio: pass --calibration DIR")
            if not Path(self.calibration).expanduser().is_dir():
                raise DymnEdgeError(f"--calibration {self.calibration}: folder not found")

    @property
    def models(self) -> list[str]:
        """Canonical model names of the run, in the order given."""
        return self.model.split(",")

    @property
    def trained_models(self) -> list[str]:
        """The models of the run that are not random-init in any case (``--weights`` is theirs)."""
        return [m for m in self.models if m not in self.random_init_models]


def static_partner(model: str) -> str | None:
    """The registered static MN of the same width as a dynamic model (dymn-s -> mn-s)."""
    spec = get_spec(model)
    if spec.arch is Arch.MN:
        return None
    return next((n for n in list_models()
                 if get_spec(n).arch is Arch.MN and get_spec(n).width == spec.width), None)


def all_variants() -> list[str]:
    """Every ``format:precision`` of the exporter's table, in table order."""
    from dymn_edge.export.formats import iter_variants  # noqa: PLC0415

    return [f"{f.value}:{p.value}" for f, p in iter_variants()]


#: calibrated int8 variants (not in the default set: they need --calibration audio) and their
#: quantization scheme; ``onnx:int8`` / ``tflite:int8`` are what ``dymn-export --int8`` gives
CALIBRATED = {"onnx:static_int8": "static_qdq", "tflite:full_int8": "full_int8"}


def normalize_variant(text: str) -> str:
    """``ONNX:FP32`` / ``tflite`` -> ``onnx:fp32`` / ``tflite:fp32``; checked against the table."""
    from dymn_edge.export.formats import format_spec  # noqa: PLC0415

    fmt, _, prec = text.strip().lower().partition(":")
    spec = format_spec(fmt)
    prec = prec or "fp32"
    if prec == "waveform":  # fp32 with the frontend in the graph (dymn-export --waveform)
        return f"{spec.format.value}:waveform"
    if f"{spec.format.value}:{prec}" in CALIBRATED:
        return f"{spec.format.value}:{prec}"
    if prec not in [p.value for p in spec.precisions]:
        allowed = ", ".join(p.value for p in spec.precisions)
        raise DymnEdgeError(f"{spec.format.value} does not support {prec} (supported: {allowed})")
    return f"{spec.format.value}:{prec}"



# ---------------------------------------------------------------------------------------


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


def _quantization(variant: str):
    """The QuantizationConfig of a calibrated int8 variant (None for the others)."""
    from dymn_edge.export.config import QuantizationConfig  # noqa: PLC0415

    scheme = CALIBRATED.get(variant)
    if scheme is None:
        return None
    return QuantizationConfig(scheme=scheme, activation_type="int8" if scheme == "full_int8" else "uint8")


def _export(model: str, variant: str, weights: str | None, random_init: bool,
            window_s: float | None, activation: str | None, cache_root: Path,
            use_cache: bool, calibration: str | None = None) -> dict[str, Any]:
    """Export one file into its cache entry, or re-use the entry when its key matches."""
    from dymn_edge.benchmarks import export_cache  # noqa: PLC0415

    fmt, prec = variant.split(":")
    q = _quantization(variant)
    cal = None
    if q is not None:
        recipe = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(q).items()}
        cal = export_cache.calibration_id(calibration, q.num_calibration, recipe)
    key = export_cache.cache_key(model=model, fmt=fmt, precision=prec, weights=weights,
                                 window_s=window_s, activation=activation, calibration=cal)
    if use_cache:
        cached = export_cache.lookup(cache_root, key)
        if cached is not None:
            log.info("reused %s %s from the export cache: %s", model, variant, cached["path"])
            return {**cached, "cached": True}
    outdir = export_cache.entry_dir(cache_root, key)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / export_cache.ENTRY).unlink(missing_ok=True)  # the file is about to be overwritten
    row = _export_file(model, variant, weights, random_init, window_s, activation, outdir,
                       q, calibration)
    if row["status"] != "failed":
        export_cache.store(cache_root, key, row)
        log.info("exported %s %s: %s", model, variant, row["path"])
    row["cached"] = False
    return row


def _export_file(model: str, variant: str, weights: str | None, random_init: bool,
                 window_s: float | None, activation: str | None, outdir: Path,
                 quantization: Any = None, calibration: str | None = None) -> dict[str, Any]:
    from dymn_edge.export.api import export_model  # noqa: PLC0415
    from dymn_edge.export.config import ExportConfig  # noqa: PLC0415

    fmt, prec = variant.split(":")
    row: dict[str, Any] = {"name": variant, "model": model, "format": fmt, "precision": prec}
    t0 = time.perf_counter()
    try:
        base = "fp32" if prec == "waveform" else "int8" if quantization is not None else prec
        ec = ExportConfig(model=model, weights=weights, random_init=random_init, format=fmt,
                          precision=base, waveform=prec == "waveform",
                          quantization=quantization,
                          calibration=calibration if quantization is not None else None,
                          # a row is the recipe it is named after: over the held-out bound it
                          # fails with the numbers instead of silently falling back
                          strict_int8=quantization is not None,
                          window_seconds=window_s, output_activation=activation,
                          output=str(outdir / f"{model}_{fmt}_{prec}"
                                     f"{'.onnx' if fmt == 'onnx' else '.tflite'}"))
        res = export_model(ec, progress=False)
    except DymnEdgeError as exc:
        row.update(status="failed", error=f"export: {exc}")
        return row
    except Exception as exc:  # a converter crash must not end the whole benchmark
        log.debug("export of %s %s crashed", model, variant, exc_info=True)
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
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return str(obj)


@dataclass
class _ModelRun:
    """Per-model state of a run: weights, data, complexity, rows."""

    name: str
    weights: str | None
    random_init: bool
    data_dir: str | None
    activation: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    num_classes: int = 527
    window_s: float = 1.0
    cx: Any = None
    accuracy: dict[str, Any] = field(default_factory=dict)


def _cache_root(cfg: BenchConfig) -> Path:
    from dymn_edge.benchmarks.export_cache import default_root  # noqa: PLC0415

    root = Path(cfg.workdir).expanduser() if cfg.workdir else default_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DymnEdgeError(f"cannot create the export folder {root} ({exc.strerror or exc}): "
                            "pass --workdir DIR") from None
    return root


def run_benchmark(cfg: BenchConfig) -> dict[str, Any]:
    """The whole run; returns the result document (see :mod:`dymn_edge.benchmarks.report`)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from dymn_edge.benchmarks.machine import machine_info, tool_versions  # noqa: PLC0415

    t_start = time.time()
    notes = list(cfg.notes)
    runs = [_ModelRun(m, *_resolve_weights(cfg, m, notes)) for m in cfg.models]
    for mr in runs:
        if cfg.no_accuracy:
            mr.data_dir = None
        mr.num_classes = _num_classes(mr.weights, get_spec(mr.name))
    _check_runs(cfg, runs)
    # One window for every model of a run: fixed-shape TFLite files of two models are only
    # comparable at the same window. Default: the first model's (10 s AudioSet head, else 1 s).
    window_req = cfg.window_s
    if window_req is None and len(runs) > 1:
        window_req = 10.0 if runs[0].num_classes == 527 else 1.0
    variants = cfg.formats or all_variants()
    cache_root = _cache_root(cfg)
    jobs = [(mr, v) for mr in runs for v in variants]
    for mr, v in tqdm(jobs, desc="export", unit="file", disable=not cfg.progress, leave=False):
        row = _export(mr.name, v, mr.weights, mr.random_init, window_req, mr.activation,
                      cache_root, cfg.cache, cfg.calibration)
        if row["status"] == "failed":
            log.warning("%s %s: %s", mr.name, v, row["error"])
        mr.rows.append(row)
    reused = sum(1 for mr in runs for r in mr.rows if r.get("cached"))
    notes.append(f"export cache {cache_root}: {reused} file(s) reused, "
                 f"{sum(len(mr.rows) for mr in runs) - reused} exported"
                 f"{' (--no-cache)' if not cfg.cache else ''}")
    for mr in runs:
        exported = [r for r in mr.rows if r["status"] != "failed"]
        mr.window_s = next((r["window_s"] for r in exported), window_req) or (
            10.0 if mr.num_classes == 527 else 1.0)
        # Complexity (analytic, at the export window and per measured length)
        frames = lat.frames_for_seconds(mr.window_s)
        mr.cx = count_model(mr.name, frames=frames, num_classes=mr.num_classes)
        if cfg.reference:
            mr.rows.insert(0, {"name": REFERENCE_NAME, "model": mr.name, "format": "pytorch",
                               "precision": "fp32", "status": "reference", "strategy": None,
                               "window_s": mr.window_s, "size_mb": _weights_mb(mr.weights),
                               "output_activation": exported[0]["output_activation"]
                               if exported else (mr.activation or "sigmoid")})
        for r in mr.rows:
            if r["status"] == "failed":
                continue
            r["macs"] = mr.cx.macs
            r["deployed_macs"] = deployed_macs(mr.cx, r.get("strategy"),
                                               export_form=r["format"] != "pytorch")
            if r["precision"] == "waveform":  # + the in-graph frontend, per export window
                from dymn_edge.export.waveform import frontend_macs  # noqa: PLC0415

                r["frontend_macs"] = frontend_macs(frames * 320)
                r["macs"] += r["frontend_macs"]
                r["deployed_macs"] += r["frontend_macs"]
            elif r["format"] == "onnx":
                r["graph_macs"] = _graph_macs(r["path"], frames)
            if r["format"] != "pytorch":
                r["ops"] = _ops(r["path"])
    # Latency: every artifact of every model in one interleaved run
    specs, owner = [], {}
    for mr in runs:
        for r in mr.rows:
            if r["status"] == "failed":
                continue
            sname = f"{mr.name} {r['name']}"
            owner[sname] = r
            if r["format"] == "pytorch":
                specs.append(lat.ArtifactSpec(sname, "torch", model=mr.name, weights=mr.weights,
                                              random_init=mr.random_init))
            else:
                specs.append(lat.ArtifactSpec(sname, "engine", path=r["path"]))
    worker_results = lat.measure(specs, lengths=tuple(cfg.lengths), threads=tuple(cfg.threads),
                                 budget_s=cfg.budget_s, progress=cfg.progress)
    gemm = {str(w.threads): w for w in worker_results if w.kind == "gemm"}
    by_spec: dict[str, list[lat.WorkerResult]] = {}
    for w in worker_results:
        by_spec.setdefault(w.name, []).append(w)
    for mr in runs:
        for r in mr.rows:
            _attach_latency(r, by_spec.get(f"{mr.name} {r['name']}", []), gemm, cx_macs=mr.cx)
    _attach_ratios([r for mr in runs for r in mr.rows])
    machine = machine_info()
    machine["reference_gemm"] = {t: _gemm_summary(w) for t, w in gemm.items()}
    # Accuracy, per model on its own data
    for mr in runs:
        mr.accuracy = _accuracy(cfg, mr, notes)
    first = runs[0]
    models_doc = {mr.name: _model_doc(mr) for mr in runs}
    return {
        "schema": RESULT_SCHEMA,
        "config": {**asdict(cfg), "models": cfg.models, "weights_resolved": first.weights,
                   "random_init_resolved": first.random_init, "data_resolved": first.data_dir,
                   "variants": variants, "window_s": first.window_s,
                   "cache_dir": str(cache_root)},
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


def _model_doc(mr: _ModelRun) -> dict[str, Any]:
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


def _num_classes(weights: str | None, spec: Any) -> int:
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


def _ops(path: str) -> dict[str, Any] | None:
    from dymn_edge.benchmarks.graph_ops import count_ops  # noqa: PLC0415

    try:
        return count_ops(path)
    except DymnEdgeError as exc:
        log.warning("op count of %s failed: %s", path, exc)
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
                    gemm: dict[str, lat.WorkerResult], *, cx_macs: Any) -> None:
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
                d["mac_fraction"] = (macs / st.steady_ms) / (_gemm_macs() / gst.steady_ms)
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


def _medians(row: dict[str, Any]) -> dict[tuple[str, str], float]:
    out = {}
    for t, cell in (row.get("latency") or {}).items():
        for L, st in ((cell or {}).get("lengths") or {}).items():
            if st and (st.get("cpu_median_ms") or st.get("median_ms")):
                out[(t, L)] = st.get("cpu_median_ms") or st["median_ms"]  # CPU time at 1 thread
    return out


def _attach_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_to_static`` (DyMN / its MN partner) and ``speedup_vs_eager`` per latency cell.

    Both are ratios of medians measured in the same interleaved run: machine speed and load
    cancel. At 1 thread the medians are thread CPU time (steadier than wall time on a shared
    box), at more threads wall time. Rows are matched on model (partner from the registry), format:precision, threads
    and input length; a cell without a counterpart gets no key.
    """
    ok = {(r.get("model"), r["name"]): r for r in rows
          if r["status"] != "failed" and r.get("latency")}
    for (model, name), r in ok.items():
        med = _medians(r)
        partner = ok.get((static_partner(model) if model else None, name))
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


def _gemm_macs() -> int:
    from dymn_edge.benchmarks.machine import GEMM_N  # noqa: PLC0415

    return GEMM_N ** 3


def eval_split(data_dir: str | Path, split: str | None) -> str | None:
    """The split scored when none is asked for: FSDD's test split (never its train clips)."""
    if split is None and (Path(data_dir) / "split.csv").is_file():
        return "test"
    return split


def _check_runs(cfg: BenchConfig, runs: list[_ModelRun]) -> None:
    """Checkpoint, head and dataset problems as one line before minutes of exporting.

    Each would otherwise fail every row of its model (the export refuses a non-AudioSet head
    without --activation; a checkpoint of another architecture does not load) or end the run
    after the exports (a dataset whose classes do not match the head).
    """
    from dymn_edge.datasets import load_dataset  # noqa: PLC0415
    from dymn_edge.models import create_model  # noqa: PLC0415

    for mr in runs:
        if mr.weights is None:
            continue
        create_model(mr.name, weights=mr.weights, allow_download=False)  # WeightsError: one line
        if mr.activation is None and mr.num_classes != 527:
            raise DymnEdgeError(f"{mr.weights} has a {mr.num_classes}-class head: say how its logits "
                                "become probabilities with --activation softmax (one class per "
                                "clip) or --activation sigmoid (multi-label)")
        if mr.data_dir is not None:
            ds = load_dataset(mr.data_dir, split=eval_split(mr.data_dir, cfg.split))
            if len(ds.labels) != mr.num_classes:
                raise DymnEdgeError(f"dataset {ds.name} has {len(ds.labels)} classes, {mr.name} "
                                    f"{mr.num_classes}: pass matching --weights and --data")


def _accuracy(cfg: BenchConfig, mr: _ModelRun, notes: list[str]) -> dict[str, Any]:
    """Score every artifact of one model; returns dataset info (or why accuracy is missing)."""
    from dymn_edge.benchmarks import accuracy as acc  # noqa: PLC0415
    from dymn_edge.datasets import load_dataset  # noqa: PLC0415

    rows, data_dir = mr.rows, mr.data_dir
    if data_dir is None:
        reason = ("disabled (--no-accuracy)" if cfg.no_accuracy else
                  "random-init model (untrained weights mean nothing)" if mr.random_init else
                  "no labelled data: pass --data DIR (FSDD / ESC-50 / AudioSet CSV / labels.csv)")
        notes.append(f"accuracy not measured ({mr.name}): {reason}")
        return {"measured": False, "reason": reason}
    ds = load_dataset(data_dir, split=eval_split(data_dir, cfg.split))
    if len(ds.labels) != mr.num_classes:
        raise DymnEdgeError(f"dataset {ds.name} has {len(ds.labels)} classes, {mr.name} "
                            f"{mr.num_classes}: pass matching --weights and --data")
    data = acc.prepare(ds, window_s=mr.window_s, limit=cfg.max_clips, progress=cfg.progress)
    from dymn_edge.models import create_model  # noqa: PLC0415

    model = create_model(mr.name, weights=mr.weights, allow_download=False)
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
        if r["precision"] == "waveform":  # takes audio, not the prepared log-mels
            r["scores_note"] = "waveform file: score it with --score-file (the runtime's audio path)"
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
            "classes": len(ds.labels), "multilabel": ds.multilabel, "window_s": mr.window_s}
