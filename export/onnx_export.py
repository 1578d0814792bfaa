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
from collections import Counter
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError, one_line
from dymn_edge.export.formats import GraphIO, mel_io
from dymn_edge.export.fused_onnx import translation_table, uses_fused_ops
from dymn_edge.metadata import METADATA_KEY, ModelMetadata, TensorInfo
from dymn_edge.ort import ort_session

log = logging.getLogger(__name__)

OPSET = 18

#: Exporter loggers quieted during export: the dynamo exporter logs every pass at INFO, and
#: the registry "torchvision is not installed. Skipping torchvision::nms" (4 lines) at WARNING.
_QUIET = (("onnx_ir", logging.WARNING), ("onnxscript", logging.WARNING), ("torch.onnx", logging.WARNING),
          ("torch._export", logging.WARNING),
          ("torch.onnx._internal.exporter._registration", logging.ERROR))


def export_onnx(module, path: str | Path, *, io: GraphIO | None = None, frames: int | None = None,
                dynamic_batch: bool, simplify: bool = True) -> Path:
    """Write ``module`` (patched, eval) to ``path`` as fp32 ONNX; returns the path.

    ``io``: the graph's signature (default: the log-mel graph of ``frames`` frames); its
    length axis is always symbolic, the batch too with ``dynamic_batch``. Uses the dynamo
    exporter (``torch.export`` + onnxscript): the TorchScript exporter bakes the traced time
    length into the pointwise Dy-Conv's reshape, so its graph fails at any other length. The
    patched model has no adaptive pooling, so dynamo's fixed-kernel AveragePool bug cannot
    occur (validation checks other lengths anyway). onnxsim then folds constants.
    """
    import torch  # noqa: PLC0415
    import onnx  # noqa: PLC0415

    io = io or mel_io(_required(frames))
    fused = uses_fused_ops(module)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    length = torch.export.Dim(io.length_name, min=io.length_min, max=io.length_max)
    dyn = {io.length_axis: length}
    if dynamic_batch:
        dyn[0] = torch.export.Dim("batch", min=1, max=1024)
    quiet = [(logging.getLogger(name), level) for name, level in _QUIET]
    levels = [lg.level for lg, _ in quiet]
    for lg, level in quiet:
        lg.setLevel(max(lg.level, level))
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (torch.zeros(io.example_shape),),
                                        input_names=[io.input_name], output_names=list(io.output_names),
                                        dynamic_shapes=(dyn,), opset_version=OPSET, dynamo=True,
                                        verbose=False, optimize=True,
                                        custom_translation_table=translation_table() if fused else None)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"ONNX export failed: {one_line(exc)}") from exc
    finally:
        for (lg, _), lv in zip(quiet, levels):
            lg.setLevel(lv)
    program.save(str(path))
    model = onnx.load(str(path))
    _check_free_axes(model, io, dynamic_batch)
    # onnxsim checks its result in ONNX Runtime, which has no kernels for the fused operators;
    # the exporter's own optimizer has already folded the constants of such a graph
    if simplify and not fused:
        model = _simplify(model, io)
    onnx.save(model, str(path))
    return path


def _check_free_axes(model, io: GraphIO, dynamic_batch: bool) -> None:
    """The axes asked to be free must be symbolic in the graph.

    When ``torch.export`` proves a guard on a dynamic size, the ONNX exporter retries with
    the suggested fix (e.g. ``batch = 1``) and returns a graph with that axis fixed, without
    an error: a file whose metadata would promise any batch.
    """
    dims = model.graph.input[0].type.tensor_type.shape.dim
    wanted = {io.length_axis: io.length_name, **({0: "batch"} if dynamic_batch else {})}
    fixed = [f"{name} (fixed at {dims[axis].dim_value})" for axis, name in sorted(wanted.items())
             if not dims[axis].dim_param]
    if fixed:
        raise ExportError(f"ONNX export failed: torch.export fixed the {' and '.join(fixed)} axis of "
                          f"'{io.input_name}', which the file must leave free")


def _required(frames: int | None) -> int:
    if frames is None:
        raise TypeError("export_onnx needs io= or frames=")
    return frames


def _simplify(model, io: GraphIO):
    """onnxsim, kept only if the result still has symbolic dims and the same outputs."""
    import onnxsim  # noqa: PLC0415

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # simplification is an optimisation, not a must
        log.warning("onnxsim failed (%s); keeping the unsimplified graph", one_line(exc, 200))
        return model
    if not ok:
        log.warning("onnxsim could not verify its result; keeping the unsimplified graph")
        return model
    if _dims(simplified) != _dims(model):
        log.warning("onnxsim fixed a dynamic dimension; keeping the unsimplified graph")
        return model
    for n in (io.length, io.length + io.probe_step):
        x = io.probe(n)
        a = ort_session(model.SerializeToString()).run(None, {io.input_name: x})
        b = ort_session(simplified.SerializeToString()).run(None, {io.input_name: x})
        # relative: random mels can drive logits to ~1e3, where float32 rounding alone is ~1e-2
        if any(float(np.max(np.abs(p - q))) > 1e-4 * (1.0 + float(np.max(np.abs(p))))
               for p, q in zip(a, b)):
            log.warning("onnxsim changed the outputs at length %d; keeping the unsimplified graph", n)
            return model
    log.debug("onnxsim: %d -> %d nodes", len(model.graph.node), len(simplified.graph.node))
    return simplified


def _dims(model) -> list[list[str | int]]:
    out = []
    for v in list(model.graph.input) + list(model.graph.output):
        out.append([d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
    return out


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


def io_info(path: str | Path) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The formats table's I/O reader: the graph's inputs and outputs as metadata entries."""
    ins, outs = onnx_io(path)

    def entry(n: str, shape: list, dtype: str) -> TensorInfo:
        return TensorInfo(n, [str(d) if isinstance(d, str) else int(d) for d in shape], dtype)

    return [entry(*t) for t in ins], [entry(*t) for t in outs]


def write_metadata(path: str | Path, meta: ModelMetadata) -> None:
    """The formats table's metadata writer (the JSON in ``metadata_props``)."""
    write_onnx_metadata(path, meta.to_json())


def count_ops(path: Path) -> Counter:
    """The formats table's op counter: nodes of the top-level graph per op type."""
    try:
        import onnx  # noqa: PLC0415  (the export extra)
    except ImportError as exc:
        raise ExportError(f"counting ONNX ops needs onnx ({exc})") from None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf DecodeError and friends
        raise ExportError(f"{path}: not a readable ONNX model ({exc})") from None
    return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                   for n in graph.node)
