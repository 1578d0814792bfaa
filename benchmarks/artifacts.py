"""The files a benchmark times: exported with :func:`dymn_edge.export.api.export_model`, or
re-used from the export cache (:mod:`dymn_edge.benchmarks.export_cache`) when the key matches.

What is measured is what ships: the rows point at the exporter's own output files.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dymn_edge.benchmarks import export_cache
from dymn_edge.benchmarks.config import CALIBRATED, FUSED, BenchConfig, variant_file
from dymn_edge.errors import DymnEdgeError
from dymn_edge.export import api as export_api
from dymn_edge.export.config import ExportConfig, QuantizationConfig
from dymn_edge.formats import format_spec

log = logging.getLogger(__name__)


def quantization_for(variant: str) -> QuantizationConfig | None:
    """The QuantizationConfig of a calibrated int8 variant (None for the others)."""
    recipe = CALIBRATED.get(variant)
    return None if recipe is None else QuantizationConfig(**recipe)


def cache_root(cfg: BenchConfig) -> Path:
    """The export cache folder of the run (created), or one line saying why it cannot be."""
    root = Path(cfg.workdir).expanduser() if cfg.workdir else export_cache.default_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DymnEdgeError(f"cannot create the export folder {root} ({exc.strerror or exc}): "
                            "pass --workdir DIR") from None
    return root


def export_artifact(model: str, variant: str, weights: str | None, random_init: bool,
                    window_s: float | None, activation: str | None, root: Path,
                    use_cache: bool, calibration: str | None = None) -> dict[str, Any]:
    """Export one file into its cache entry, or re-use the entry when its key matches.

    An engine variant (``openvino:fp32``) is its format's file (``onnx:fp32``, the same cache
    entry) in a row named after the variant, with the engine that runs it in ``row["engine"]``.
    """
    file_variant, engine = variant_file(variant)
    row = _export_or_reuse(model, file_variant, weights, random_init, window_s, activation, root,
                           use_cache, calibration)
    return {**row, "name": variant, "engine": engine}


def _export_or_reuse(model: str, variant: str, weights: str | None, random_init: bool,
                     window_s: float | None, activation: str | None, root: Path,
                     use_cache: bool, calibration: str | None) -> dict[str, Any]:
    fmt, prec = variant.split(":")
    q = quantization_for(variant)
    cal = None
    if q is not None:
        recipe = {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(q).items()}
        cal = export_cache.calibration_id(calibration, q.num_calibration, recipe)
    key = export_cache.cache_key(model=model, fmt=fmt, precision=prec, weights=weights,
                                 window_s=window_s, activation=activation, calibration=cal)
    if use_cache:
        cached = export_cache.lookup(root, key)
        if cached is not None:
            log.info("reused %s %s from the export cache: %s", model, variant, cached["path"])
            return {**cached, "cached": True}
    outdir = export_cache.entry_dir(root, key)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / export_cache.ENTRY).unlink(missing_ok=True)  # the file is about to be overwritten
    row = _export_file(model, variant, weights, random_init, window_s, activation, outdir,
                       q, calibration)
    if row["status"] != "failed":
        export_cache.store(root, key, row)
        log.info("exported %s %s: %s", model, variant, row["path"])
    row["cached"] = False
    return row


def _export_file(model: str, variant: str, weights: str | None, random_init: bool,
                 window_s: float | None, activation: str | None, outdir: Path,
                 quantization: QuantizationConfig | None = None,
                 calibration: str | None = None) -> dict[str, Any]:
    """One export into ``outdir``; a failed or crashed export is a failed row, not an exception."""
    fmt, prec = variant.split(":")
    row: dict[str, Any] = {"name": variant, "model": model, "format": fmt, "precision": prec}
    t0 = time.perf_counter()
    try:
        base = "fp32" if prec in ("waveform", FUSED) else "int8" if quantization is not None else prec
        ec = ExportConfig(model=model, weights=weights, random_init=random_init, format=fmt,
                          precision=base, waveform=prec == "waveform",
                          strategy=FUSED if prec == FUSED else None,
                          quantization=quantization,
                          calibration=calibration if quantization is not None else None,
                          # a row is the recipe it is named after: over the held-out bound it
                          # fails with the numbers instead of silently falling back
                          strict_int8=quantization is not None,
                          window_seconds=window_s, output_activation=activation,
                          output=str(outdir / f"{model}_{fmt}_{prec}{format_spec(fmt).suffix}"))
        res = export_api.export_model(ec, progress=False)
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


def _jsonable(obj: Any) -> Any:
    """``obj`` with whatever JSON cannot hold turned into strings (a validation report)."""
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {str(k): _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_jsonable(v) for v in obj]
        return str(obj)
