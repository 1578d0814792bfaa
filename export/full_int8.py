"""Full-integer int8 TFLite (int8 kernels for every op, int8 I/O) of an export-form DyMN / MN.

Recipe: the fp32 flatbuffer from :func:`~dymn_edge.export.tflite_export.convert_tflite`, then
AI Edge Quantizer static a8w8 on every supported op (convs per-channel, FULLY_CONNECTED
per-tensor: those hold the Dy-Conv kernel banks, where per-channel stores one scale per row),
with activation ranges computed here instead of by AEQ's calibrator.

Why our own ranges: AEQ's calibrator keeps a moving average (0.95) of the per-clip min/max,
which clips the rare large activations of the context / Dy-ReLU / attention paths. On the
trained FSDD DyMN-S (fp32 0.9667, 300 test clips, 64 FSDD train clips for calibration):

- AEQ calibrator (moving-average min/max): 0.867
- mean of per-clip percentiles (99.99 / 99.9): 0.850 / 0.717 (clipping hurts more)
- global min/max over the clips: 0.957
- 1st percentile of the per-clip minima / 99th of the per-clip maxima: 0.967 (0.97 with the
  FC weights per-tensor, 2.9 MB), but **0.41** when the 4 metro-recording segments that
  ``calibration_mels(None, ...)`` adds are in the set: on that out-of-domain audio the FSDD
  model's activations reach 100-200x their FSDD range (Dy-ReLU, attention logits, context
  convs of the last blocks), and p99 of 68 clips is their maximum.
- 5th percentile of the per-clip minima / 95th of the per-clip maxima: 0.963 on 64 FSDD clips,
  0.967 on 64 FSDD clips + 4 metro segments (10/90: 0.960 / 0.967). A few out-of-domain
  clips (under 5 % of the set) are then ignored.
- Since the lean graph (coefficients folded, frequency gate inside Dy-ReLU) and with the
  calibration folder explicit (64 FSDD train clips, no odd clips), p5/p95 clips too much:
  0.9467 against fp32 0.9700 (the exporter's validation, through the runtime audio path:
  0.9500 -> 0.9267, over its 2-point limit). MinMax 0.9567, p1/p99 0.9667, **p2/p98 0.9667**
  (used here: with 64 clips it drops the single most extreme clip of each side; a set with
  several out-of-domain clips needs cleaning, or a larger set).

Per-tensor int8 has little margin on this model either way (clipping: 0.87, too wide: 0.41).

Every tensor in the result is int8/int32 (no DEQUANTIZE, no float kernel); input ``mel`` and
outputs are int8 with their scale / zero point in the signature. Speed (1 thread,
ai-edge-litert 2.3 XNNPACK): about 3x slower than fp32, because XNNPACK does not delegate
int8 SOFTMAX, HARD_SWISH, MAXIMUM and BATCH_MATMUL with two runtime operands (the graph splits
into ~85 partitions): the scheme is for integer-only accelerators, not for CPU speed. Even
fully delegated it would not pay on an x86 CPU without VNNI: XNNPACK's int8 convs alone run at
0.9-1.14x the fp32 ones (0.82x depthwise; single-conv measurements in the README).
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError, one_line
from dymn_edge.native_output import converter_output
from dymn_edge.export.tflite_export import convert_tflite, tflite_io
from dymn_edge.export.validate import ops_outside_xnnpack

log = logging.getLogger(__name__)

SCHEME = "full_int8: AEQ static a8w8 (conv per-channel, FC per-tensor), int8 I/O, ranges p2/p98 of per-clip min/max"

# ops that must not compute in float in the result
_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL")

#: The int8 ops XNNPACK (ai-edge-litert 2.3) refuses in a full-int8 DyMN (86 partitions):
#: kept float with ``float_ops=XNNPACK_FLOAT_OPS``, the file is one XNNPACK graph (0 ops outside)
#: with int8 convs / FULLY_CONNECTED. Trained FSDD DyMN-S, 1 s, 1 thread, interleaved, fp32 /
#: variant latency: full int8 0.37, this hybrid 0.77 (2.1x faster than full int8, still slower
#: than fp32: the QUANTIZE / DEQUANTIZE pairs around every float op cost more than int8 saves
#: at this size); FSDD accuracy (fsdd_eval recipe) fp32 0.970, hybrid 0.953, full int8 0.947.
#: At 10 s (random init, same kind of run): DyMN-M hybrid 0.45x fp32 (int8 ADD 11 and RELU 5
#: also stay outside XNNPACK: 16 partitions), full int8 0.19x; MN-10 hybrid 0.97x, full 0.57x.
XNNPACK_FLOAT_OPS = ("SOFTMAX", "HARD_SWISH", "MAXIMUM", "BATCH_MATMUL")


def activation_ranges(fp32: bytes, calibration: np.ndarray, *, low_pct: float = 2.0,
                      high_pct: float = 98.0) -> dict[str, dict[str, np.ndarray]]:
    """AEQ QSVs ``{tensor name: {"min", "max"}}`` for every non-constant tensor of ``fp32``.

    Per clip the min and max of each tensor; the range is the ``low_pct`` percentile of the
    minima and the ``high_pct`` percentile of the maxima (close to the global extremes, robust
    to a few odd clips).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    it = Interpreter(model_content=fp32, experimental_preserve_all_tensors=True, num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inputs = it.get_input_details()
    if len(inputs) != 1:
        raise ExportError(f"full int8 expects a one-input graph, got {len(inputs)} inputs")
    names: dict[int, str] = {d["index"]: d["name"] for d in inputs}
    for op in it._get_ops_details():  # the only listing of op outputs
        for t in op["outputs"]:
            if t >= 0:
                names[t] = it._get_tensor_details(t, 0)["name"]
    lows: dict[int, list[float]] = {t: [] for t in names}
    highs: dict[int, list[float]] = {t: [] for t in names}
    ndim: dict[int, int] = {}
    for i in range(len(calibration)):
        it.set_tensor(inputs[0]["index"], np.ascontiguousarray(calibration[i:i + 1], np.float32))
        it.invoke()
        for t in names:
            v = it.get_tensor(t)
            ndim[t] = v.ndim
            lows[t].append(float(v.min()))
            highs[t].append(float(v.max()))
    out = {}
    for t, name in names.items():
        shape = (1,) * max(ndim[t], 1)
        lo = min(float(np.percentile(lows[t], low_pct)), 0.0)
        hi = max(float(np.percentile(highs[t], high_pct)), 0.0)
        out[name] = {"min": np.full(shape, lo, np.float32), "max": np.full(shape, hi, np.float32)}
    return out


def graph_ops(data: bytes | str | Path) -> dict:
    """Op counts, float-computing ops and ops left outside XNNPACK of a flatbuffer."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    kw = {"model_path": str(data)} if isinstance(data, (str, Path)) else {"model_content": data}
    it = Interpreter(**kw, num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    dtype = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    ops: collections.Counter = collections.Counter()
    float_ops: collections.Counter = collections.Counter()
    for op in it._get_ops_details():
        ops[op["op_name"]] += 1
        ts = [t for t in list(op["inputs"]) + list(op["outputs"]) if t >= 0]
        if any(dtype.get(t) in (np.float32, np.float16) for t in ts):
            float_ops[op["op_name"]] += 1
    outside = None
    if isinstance(data, (str, Path)):
        outside = dict(collections.Counter(ops_outside_xnnpack(data)))
    return {"ops": dict(ops), "float_ops": dict(float_ops), "outside_xnnpack": outside}


def run_quantizer(q, calibration_result=None):  # noqa: ANN001, ANN201 (AEQ's own types, imported lazily)
    """``q.quantize`` without its console output.

    AEQ draws a tqdm bar ("Applying Transformations to tensors") for graphs of more than 100
    tensors even when asked not to: its ``quantize`` does not pass ``enable_progress_bar`` on to
    the graph rewrite. The capture keeps it (and any native noise) out of the user's terminal
    and logs; it is replayed with ``--verbose`` or when quantization fails.
    """
    with converter_output():
        try:
            return q.quantize(calibration_result, enable_progress_report=False, enable_progress_bar=False)
        except TypeError:  # older AEQ without enable_progress_bar
            return q.quantize(calibration_result, enable_progress_report=False)


def _quantizer(fp32: bytes, float_ops: tuple[str, ...]):
    """AEQ's quantizer with the full-integer recipe (``float_ops`` left in float)."""
    from ai_edge_quantizer import qtyping, quantizer  # noqa: PLC0415  (the export extra)
    from ai_edge_quantizer.algorithm_manager import AlgorithmName  # noqa: PLC0415  (the export extra)

    op = qtyping.TFLOperationName
    q = quantizer.Quantizer(bytearray(fp32))
    q.add_static_config(".*", op.ALL_SUPPORTED, 8, 8,
                        weight_granularity=qtyping.QuantGranularity.CHANNELWISE)
    q.add_static_config(".*", op.FULLY_CONNECTED, 8, 8,
                        weight_granularity=qtyping.QuantGranularity.TENSORWISE)
    for name in float_ops:
        try:
            q.update_quantization_recipe(".*", getattr(op, name), algorithm_key=AlgorithmName.NO_QUANTIZE)
        except AttributeError:
            raise ExportError(f"full int8: unknown TFLite op '{name}' in float_ops") from None
    return q


def quantize_full_int8_tflite(model, window_frames: int, calibration: np.ndarray,
                              output: Path, *, fp32: bytes | None = None,
                              float_ops: tuple[str, ...] = ()) -> dict:
    """Write the full-integer int8 TFLite of the export-form ``model`` to ``output``.

    ``calibration``: (N, 1, 128, window_frames) float32 log-mels of representative audio
    (64 clips in the measurements above). ``fp32``: the fp32 flatbuffer of ``model`` at
    ``window_frames``, if already converted. Returns ``scheme``, ``io_dtype``, the op counts,
    ops with a float tensor (must be empty), ops outside XNNPACK and the size.

    ``float_ops``: TFLite op names left in float (e.g. :data:`XNNPACK_FLOAT_OPS`, for a CPU
    file XNNPACK runs whole); the result is then not integer-only (not for NPUs).
    """
    calibration = np.asarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or calibration.shape[1:3] != (1, 128) or calibration.shape[3] != window_frames:
        raise ExportError(f"calibration must be (N, 1, 128, {window_frames}) log-mels, "
                          f"got {calibration.shape}")
    if len(calibration) == 0:
        raise ExportError("full int8 needs calibration audio")
    if fp32 is None:
        fp32 = convert_tflite(model, frames=window_frames)
    qsvs = activation_ranges(fp32, calibration)
    q = _quantizer(fp32, float_ops)
    try:
        result = run_quantizer(q, qsvs)
    except Exception as exc:  # the quantizer raises many types
        raise ExportError(f"full int8 quantization failed: {one_line(exc)}") from exc
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(bytes(result.quantized_model))
    info = graph_ops(output)
    bad = {k: v for k, v in info["float_ops"].items() if k in _COMPUTE_OPS and k not in float_ops}
    if bad:
        raise ExportError(f"full int8: float conv/matmul ops remain: {bad}")
    inputs, outputs = tflite_io(output.read_bytes())
    scheme = SCHEME + (f"; float: {', '.join(float_ops)}" if float_ops else "")
    return {"scheme": scheme, "io_dtype": {d["name"]: d["dtype"] for d in inputs + outputs},
            "io": {"inputs": inputs, "outputs": outputs}, "size_bytes": output.stat().st_size,
            "calibration_clips": len(calibration), **info}
