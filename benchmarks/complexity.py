"""What each row computes: analytic MACs (deployed form), the ONNX graph's MACs, op counts.

The analytic count (:mod:`dymn_edge.benchmarks.macs`) is taken at the export window; an
ONNX row also gets its graph's count, which checks the analytic one on the shipped file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dymn_edge.arch import DynConvStrategy
from dymn_edge.benchmarks.config import REFERENCE_NAME, ModelRun
from dymn_edge.benchmarks.graph_macs import count_onnx
from dymn_edge.benchmarks.graph_ops import count_ops
from dymn_edge.benchmarks.macs import count_model, deployed_macs
from dymn_edge.errors import DymnEdgeError
from dymn_edge.export.waveform import frontend_macs
from dymn_edge.frontend import frames_for_seconds

log = logging.getLogger(__name__)


def reference_row(mr: ModelRun) -> dict[str, Any]:
    """The eager PyTorch fp32 row of a model (what every artifact is compared with)."""
    exported = [r for r in mr.rows if r["status"] != "failed"]
    return {"name": REFERENCE_NAME, "model": mr.name, "format": "pytorch",
            "precision": "fp32", "status": "reference", "strategy": None,
            "window_s": mr.window_s, "size_mb": _weights_mb(mr.weights),
            "output_activation": exported[0]["output_activation"]
            if exported else (mr.activation or "sigmoid")}


def annotate(mr: ModelRun) -> None:
    """Set ``mr.cx`` (at ``mr.window_s``) and put MACs / graph MACs / ops into its rows."""
    frames = frames_for_seconds(mr.window_s)
    mr.cx = count_model(mr.name, frames=frames, num_classes=mr.num_classes)
    for r in mr.rows:
        if r["status"] == "failed":
            continue
        r["macs"] = mr.cx.macs
        r["deployed_macs"] = deployed_macs(mr.cx, r.get("strategy"),
                                           export_form=r["format"] != "pytorch")
        if r["precision"] == "waveform":  # + the in-graph frontend, per export window
            r["frontend_macs"] = frontend_macs(frames * 320)
            r["macs"] += r["frontend_macs"]
            r["deployed_macs"] += r["frontend_macs"]
        elif r["format"] == "onnx" and r.get("strategy") != DynConvStrategy.FUSED.value:
            # the counter reads intermediate shapes from ONNX Runtime, which cannot run the
            # fused operators: fused rows keep the analytic deployed count
            r["graph_macs"] = _graph_macs(r["path"], frames)
        if r["format"] != "pytorch":
            r["ops"] = _ops(r["path"])


def _weights_mb(weights: str | None) -> float | None:
    return Path(weights).stat().st_size / 1e6 if weights else None


def _graph_macs(path: str, frames: int) -> int | None:
    try:
        return count_onnx(path, frames=frames).total
    except DymnEdgeError as exc:
        log.warning("graph MAC count of %s failed: %s", path, exc)
        return None


def _ops(path: str) -> dict[str, Any] | None:
    try:
        return count_ops(path)
    except DymnEdgeError as exc:
        log.warning("op count of %s failed: %s", path, exc)
        return None
