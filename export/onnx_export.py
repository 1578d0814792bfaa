"""ONNX writer: patched module -> simplified ONNX with dynamic time (and batch where possible).

Input ``mel`` (B, 1, 128, T); outputs ``logits`` (B, C) and ``embedding`` (B, E). The
``runtime_weight`` and ``stride_split`` strategies compute depthwise kernels per sample, so their batch is 1
(static in the graph, said in the metadata); ``static_k`` takes any batch. The time axis is
always dynamic: the patched model uses means, never adaptive pooling, so no length is baked
in (checked after simplification at several lengths).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError, one_line
from dymn_edge.metadata import METADATA_KEY
from dymn_edge.ort import ort_session

log = logging.getLogger(__name__)

INPUT_NAME = "mel"
OUTPUT_NAMES = ("logits", "embedding")
OPSET = 18


def export_onnx(module, path: str | Path, *, frames: int, dynamic_batch: bool,
                simplify: bool = True) -> Path:
    """Write ``module`` (patched, eval) to ``path`` as fp32 ONNX; returns the path.

    Uses the dynamo exporter (``torch.export`` + onnxscript) with symbolic batch/time dims:
    the TorchScript exporter bakes the traced time length into the pointwise Dy-Conv's
    reshape, so its graph fails at any other length. The patched model has no adaptive
    pooling, so dynamo's fixed-kernel AveragePool bug cannot occur (validation checks other
    lengths anyway). onnxsim then folds constants.
    """
    import torch  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, 1, 128, frames)
    frames_dim = torch.export.Dim("frames", min=32, max=100_000)
    dyn = {0: torch.export.Dim("batch", min=1, max=1024), 3: frames_dim} if dynamic_batch else {3: frames_dim}
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch._export")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # the dynamo exporter logs every pass at INFO
        lg.setLevel(max(lg.level, logging.WARNING))
    # ... and "torchvision is not installed. Skipping torchvision::nms" (4 lines) at WARNING
    quiet.append(logging.getLogger("torch.onnx._internal.exporter._registration"))
    levels.append(quiet[-1].level)
    quiet[-1].setLevel(max(quiet[-1].level, logging.ERROR))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (x,), input_names=[INPUT_NAME],
                                        output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=(dyn,),
                                        opset_version=OPSET, dynamo=True, verbose=False,
                                        optimize=True)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export failed: {one_line(exc)}") from exc
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    program.save(str(path))
    model = onnx.load(str(path))
    if simplify:
        model = _simplify(model, frames)
    onnx.save(model, str(path))
    return path


def _simplify(model, frames: int):
    """onnxsim, kept only if the result still has symbolic dims and the same outputs."""
    import onnxsim  # noqa: PLC0415

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - simplification is an optimisation, not a must
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", one_line(exc, 200))
        return model
    if not ok:
        log.warning("onnxsim could not verify its result; keeping the unsimplified graph")
        return model
    if _dims(simplified) != _dims(model):
        log.warning("onnxsim fixed a dynamic dimension; keeping the unsimplified graph")
        return model
    for t in (frames, frames + 37):
        a = run_onnx_bytes(model.SerializeToString(), t)
        b = run_onnx_bytes(simplified.SerializeToString(), t)
        # relative: random mels can drive logits to ~1e3, where float32 rounding alone is ~1e-2
        if any(float(np.max(np.abs(p - q))) > 1e-4 * (1.0 + float(np.max(np.abs(p))))
               for p, q in zip(a, b)):
            log.warning("onnxsim changed the outputs at %d frames; keeping the unsimplified graph", t)
            return model
    log.debug("onnxsim: %d -> %d nodes", len(model.graph.node), len(simplified.graph.node))
    return simplified


def _dims(model) -> list[list[str | int]]:
    out = []
    for v in list(model.graph.input) + list(model.graph.output):
        out.append([d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
    return out


def run_onnx_bytes(data: bytes, frames: int, seed: int = 0) -> list[np.ndarray]:
    """Outputs of an ONNX model on a seeded random mel of ``frames`` frames (batch 1)."""
    sess = ort_session(data)
    x = np.random.default_rng(seed).standard_normal((1, 1, 128, frames)).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def onnx_io(path: str | Path) -> tuple[list[tuple[str, list, str]], list[tuple[str, list, str]]]:
    """(name, shape with symbolic dims as strings, dtype) of the graph inputs and outputs."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path), load_external_data=False)
    names = {1: "float32", 2: "uint8", 3: "int8", 10: "float16"}

    def info(v):
        tt = v.type.tensor_type
        return (v.name, [d.dim_param or d.dim_value for d in tt.shape.dim],
                names.get(tt.elem_type, str(tt.elem_type)))

    return [info(v) for v in model.graph.input], [info(v) for v in model.graph.output]


def write_onnx_metadata(path: str | Path, json_text: str) -> None:
    """Store the dymn-edge metadata JSON under ``metadata_props[METADATA_KEY]`` (replacing it)."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json_text
    model.producer_name = "dymn-edge"
    onnx.save(model, str(path))
